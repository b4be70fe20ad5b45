"""The estimate-quality diagnostic: rank correlation, top-k overlap, split halves, reports."""

from __future__ import annotations

import json
import math

import pytest
import torch
from scipy.stats import spearmanr

from fishertune.sensitivity import (
    Agreement,
    DomainTerm,
    EstimateQuality,
    score_agreement,
    spearman,
    split_batches,
    topk_overlap,
)


def test_spearman_against_hand_computed_ranks() -> None:
    # a ranks 1..5 in order; b = [2, 1, 4, 3, 5]: d² = 1+1+1+1+0 = 4, ρ = 1 − 6·4/(5·24) = 0.8.
    a = {"w": torch.tensor([10.0, 20.0, 30.0]), "v": torch.tensor([40.0, 50.0])}
    b = {"w": torch.tensor([2.0, 1.0, 4.0]), "v": torch.tensor([3.0, 5.0])}
    assert spearman(a, b) == pytest.approx(0.8)
    assert spearman(a, a) == pytest.approx(1.0)
    assert spearman(a, {k: -v for k, v in a.items()}) == pytest.approx(-1.0)


def test_spearman_with_ties_matches_scipy() -> None:
    torch.manual_seed(0)
    a = {"x": torch.randint(0, 5, (40,)).float(), "y": torch.randn(3, 7)}
    b = {"x": torch.randint(0, 3, (40,)).float(), "y": torch.randn(3, 7)}
    flat_a = torch.cat([a["x"], a["y"].flatten()]).numpy()
    flat_b = torch.cat([b["x"], b["y"].flatten()]).numpy()
    assert spearman(a, b) == pytest.approx(float(spearmanr(flat_a, flat_b).statistic))


def test_non_finite_elements_are_left_out() -> None:
    """Non-candidates carry −inf in a tuner's scores; they are not compared."""
    a = {"w": torch.tensor([1.0, 2.0, -math.inf, 3.0])}
    b = {"w": torch.tensor([1.0, 2.0, 5.0, 3.0])}
    assert spearman(a, b) == pytest.approx(1.0)
    assert score_agreement(a, b, count=1).elements == 3


def test_topk_overlap_by_hand() -> None:
    a = {"w": torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])}
    b = {"w": torch.tensor([5.0, 1.0, 4.0, 2.0, 3.0])}
    assert topk_overlap(a, b, 1) == 1.0  # both pick element 0
    assert topk_overlap(a, b, 2) == 0.5  # {0, 1} vs {0, 2}
    assert topk_overlap(a, b, 3) == pytest.approx(2 / 3)  # {0, 1, 2} vs {0, 2, 4}
    with pytest.raises(ValueError, match="count must lie in"):
        topk_overlap(a, b, 6)


def test_score_agreement_and_chance() -> None:
    torch.manual_seed(1)
    a = {"w": torch.randn(1000)}
    agreement = score_agreement(a, a, fraction=0.05)
    assert (agreement.count, agreement.elements) == (50, 1000)
    assert (agreement.spearman, agreement.overlap) == (pytest.approx(1.0), 1.0)
    assert agreement.chance_overlap == 0.05
    assert not agreement.near_chance
    unrelated = score_agreement(a, {"w": torch.randn(1000)}, fraction=0.05)
    assert unrelated.near_chance
    with pytest.raises(ValueError, match="exactly one of"):
        score_agreement(a, a)
    with pytest.raises(ValueError, match="different tensors"):
        score_agreement(a, {"v": torch.randn(1000)}, count=3)
    with pytest.raises(ValueError, match="NaN"):
        score_agreement(a, {"w": torch.full((1000,), math.nan)}, count=3)


def test_split_batches_are_disjoint_halves() -> None:
    assert split_batches([0, 1, 2, 3, 4]) == ([0, 2, 4], [1, 3])
    with pytest.raises(ValueError, match="at least 2"):
        split_batches([0])


def test_quality_report_round_trips_and_warns_near_chance() -> None:
    good = Agreement(0.95, 0.8, 50, 1000)
    bad = Agreement(0.01, 0.06, 50, 1000)
    quality = EstimateQuality({"F": good, "dF": bad}, bad, "variational", {"gamma": 1e-9})
    assert EstimateQuality.from_dict(quality.to_dict()) == quality
    # a checkpoint's JSON has sorted keys; the report keeps the order F, dF, DRF
    three = EstimateQuality({"F": good, "dF": bad, "DRF": good}, None, "variational", {})
    stored = json.loads(json.dumps(three.to_dict(), sort_keys=True))
    assert list(EstimateQuality.from_dict(stored).reliability) == ["F", "dF", "DRF"]
    warnings = quality.warnings()
    assert len(warnings) == 2
    assert "dF is near chance" in warnings[0]
    assert "diagonal Fisher only at chance" in warnings[1]
    assert any("gamma 1e-09" in line for line in quality.describe())
    assert EstimateQuality({"F": good}, good, "variational", {}).warnings() == []


@pytest.mark.parametrize(
    ("overlap_f", "overlap_df", "warning"),
    [
        (0.97, 0.10, "is 97.0% the F selection; the domain term ΔF does not count"),
        (0.30, 0.95, "is 95.0% the ΔF selection; the task Fisher F does not count"),
        (0.60, 0.50, None),
    ],
)
def test_domain_term_check_warns_when_one_term_decides(
    overlap_f: float, overlap_df: float, warning: str | None
) -> None:
    term = DomainTerm("normalised", 0.135, overlap_f, overlap_df, 0.4, 50, 1000)
    quality = EstimateQuality({}, None, "diagonal", {"floor": 1e-7}, term)
    stored = json.loads(json.dumps(quality.to_dict(), sort_keys=True))
    assert EstimateQuality.from_dict(stored) == quality
    warnings = quality.warnings()
    if warning is None:
        assert warnings == []
    else:
        assert len(warnings) == 1
        assert warning in warnings[0]
    described = [line for line in quality.describe() if line.startswith("domain term")]
    assert described == [
        f"domain term: DRF (normalised, c 0.135) shares {100 * overlap_f:.1f}% of its top-5% "
        f"with F, {100 * overlap_df:.1f}% with ΔF; Spearman(F, ΔF) 0.40"
    ]
