"""DR-FIM combinations (method.md §5) and their stable form (paper Eq. 15)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import rankdata

from fishertune.selection import Selection, top_k
from fishertune.sensitivity import (
    dr_fim,
    median_floor,
    quantiles,
    shift_coefficient,
    stable_dr_fim,
)

F = {"w": torch.tensor([1.0, 2.0, 0.0, 4.0])}
G = {"w": torch.tensor([3.0, 2.0, 1.0, 1.0])}


def test_paper_mode_is_eq_7_as_printed() -> None:
    coef = shift_coefficient(0.5, 0.5)
    assert coef == pytest.approx(math.exp(-1.0))
    delta = torch.tensor([2.0 / 1.0, 0.0, 1.0 / 1e-8, 3.0 / 1.0])
    for combine in ("paper", "normalised", "rank"):
        assert torch.equal(dr_fim(F, G, coef=coef, variant="F", combine=combine)["w"], F["w"])
    paper = {"coef": coef, "combine": "paper"}
    torch.testing.assert_close(dr_fim(F, G, variant="dF", **paper)["w"], delta)
    torch.testing.assert_close(dr_fim(F, G, **paper)["w"], F["w"] + coef * delta)


def test_normalised_mode_by_hand() -> None:
    # the floor is the (lower) median of F = [0, 1, 2, 4]: 1
    assert median_floor(F) == 1.0
    shift = torch.tensor([2.0 / 2.0, 0.0 / 3.0, 1.0 / 1.0, 3.0 / 2.0])  # |F-F'|/(min+1)
    torch.testing.assert_close(dr_fim(F, G, coef=0.5, variant="dF")["w"], shift)
    want = F["w"] / (7.0 / 4.0) + 0.5 * shift / (3.5 / 4.0)
    torch.testing.assert_close(dr_fim(F, G, coef=0.5)["w"], want)
    # an explicit floor replaces the median
    torch.testing.assert_close(
        dr_fim(F, G, coef=0.5, variant="dF", floor=3.0)["w"],
        torch.tensor([2.0 / 4.0, 0.0, 1.0 / 3.0, 3.0 / 4.0]),
    )


def test_rank_mode_by_hand() -> None:
    # quantiles of F [1, 2, 0, 4] among 4: [2, 3, 1, 4] / 4; of the shift [1, 0, 1, 1.5] (ties
    # share their mean rank, (2 + 3) / 2): [2.5, 1, 2.5, 4] / 4
    want = torch.tensor([2.0, 3.0, 1.0, 4.0]) / 4 + 0.25 * torch.tensor([2.5, 1.0, 2.5, 4.0]) / 4
    torch.testing.assert_close(dr_fim(F, G, coef=0.25, combine="rank")["w"], want)


def test_quantiles_match_scipy_mean_ranks_over_several_tensors() -> None:
    generator = torch.Generator().manual_seed(3)
    scores = {
        "a": torch.randint(0, 6, (4, 5), generator=generator).double(),
        "b": torch.randint(0, 6, (7,), generator=generator).double(),
    }
    got = quantiles(scores)
    flat = np.concatenate([scores["a"].flatten().numpy(), scores["b"].numpy()])
    want = rankdata(flat, method="average") / flat.size
    np.testing.assert_allclose(np.concatenate([got["a"].flatten().numpy(), got["b"].numpy()]), want)


def test_means_and_quantiles_run_over_the_candidates_only() -> None:
    f = {"w": torch.tensor([1.0, 3.0, 1000.0])}
    g = {"w": torch.tensor([2.0, 3.0, 1.0])}
    candidates = Selection.from_masks({"w": torch.tensor([True, True, False])})
    # candidates F [1, 3]: floor (lower median) 1, mean 2; shift [1/2, 0] mean 1/4
    got = dr_fim(f, g, coef=1.0, candidates=candidates)["w"][:2]
    torch.testing.assert_close(got, torch.tensor([0.5 + 2.0, 1.5 + 0.0]))


@pytest.mark.parametrize("combine", ["normalised", "rank"])
def test_no_ranking_moves_when_the_loss_is_rescaled(combine: str) -> None:
    generator = torch.Generator().manual_seed(0)
    f = {"w": torch.rand(200, generator=generator) ** 4, "v": torch.rand(50, generator=generator)}
    g = {k: v * (0.5 + torch.rand(v.shape, generator=generator)) for k, v in f.items()}

    def ranking(scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return dict(top_k({k: v.double() for k, v in scores.items()}, count=25).items())

    for scale in (1e-6, 1e3):
        scaled_f = {k: scale * v for k, v in f.items()}
        scaled_g = {k: scale * v for k, v in g.items()}
        base = dr_fim(f, g, coef=0.4, combine=combine)
        moved = dr_fim(scaled_f, scaled_g, coef=0.4, combine=combine)
        assert all(torch.equal(ranking(base)[k], ranking(moved)[k]) for k in f)
        # the stable estimate: a loss scaled by k scales F̂ and the derived γ alike (Λ fixed)
        gamma, tau = 1e-3, {"w": 0.1, "v": 0.2}
        lam = {k: v / gamma + tau[k] ** -2 for k, v in f.items()}
        lam_shift = {k: v / gamma + tau[k] ** -2 for k, v in g.items()}
        kwargs = {"tau": tau, "coef": 0.4, "combine": combine}
        stable = stable_dr_fim(lam, lam_shift, gamma=gamma, **kwargs)
        stable_moved = stable_dr_fim(lam, lam_shift, gamma=scale * gamma, **kwargs)
        assert all(torch.equal(ranking(stable)[k], ranking(stable_moved)[k]) for k in f)
    # Eq. 7 as printed is not scale-free: with F ≈ 1e-6 its shift term alone decides
    tiny_f = {k: 1e-6 * v for k, v in f.items()}
    tiny_g = {k: 1e-6 * v for k, v in g.items()}
    paper = dr_fim(tiny_f, tiny_g, coef=0.4, combine="paper")
    shift_only = dr_fim(tiny_f, tiny_g, coef=0.4, combine="paper", variant="dF")
    assert all(torch.equal(ranking(paper)[k], ranking(shift_only)[k]) for k in f)


def test_stable_paper_mode_is_eq_15_as_printed() -> None:
    gamma, tau, coef, eps = 0.1, 0.5, 0.3, 1e-8
    lam = {"w": torch.tensor([5.0, 9.0, 4.0])}
    lam_shift = {"w": torch.tensor([6.0, 9.0, 20.0])}
    prior = tau**-2
    want_f = gamma * (lam["w"] - prior)
    want_d = (lam["w"] - lam_shift["w"]).abs() / (
        torch.minimum(lam["w"], lam_shift["w"]) + eps / gamma
    )
    kwargs = {"gamma": gamma, "tau": tau, "coef": coef, "eps": eps, "combine": "paper"}
    torch.testing.assert_close(stable_dr_fim(lam, lam_shift, variant="F", **kwargs)["w"], want_f)
    torch.testing.assert_close(
        stable_dr_fim(lam, lam_shift, variant="dF", **kwargs)["w"], gamma * want_d
    )
    torch.testing.assert_close(
        stable_dr_fim(lam, lam_shift, **kwargs)["w"], want_f + gamma * coef * want_d
    )


def test_stable_normalised_mode_by_hand() -> None:
    gamma, tau, coef = 0.1, 0.5, 0.3
    lam = {"w": torch.tensor([5.0, 9.0, 4.0])}
    lam_shift = {"w": torch.tensor([6.0, 9.0, 20.0])}
    fisher = gamma * (lam["w"] - tau**-2)  # [0.1, 0.5, 0.0]
    # the floor γ/τ² turns the relative shift into |Λ − Λ'| / min(Λ, Λ')
    shift = torch.tensor([1.0 / 5.0, 0.0, 16.0 / 4.0])
    kwargs = {"gamma": gamma, "tau": tau, "coef": coef}
    torch.testing.assert_close(stable_dr_fim(lam, lam_shift, variant="dF", **kwargs)["w"], shift)
    want = fisher / fisher.mean() + coef * shift / shift.mean()
    torch.testing.assert_close(stable_dr_fim(lam, lam_shift, **kwargs)["w"], want)


def test_mismatches_are_reported() -> None:
    a = {"w": torch.ones(3)}
    with pytest.raises(ValueError, match="different parameters"):
        dr_fim(a, {"v": torch.ones(3)}, coef=1.0)
    with pytest.raises(ValueError, match="shape mismatch for 'w'"):
        dr_fim(a, {"w": torch.ones(4)}, coef=1.0)
    with pytest.raises(ValueError, match="variant must be one of"):
        dr_fim(a, a, coef=1.0, variant="DR")
    with pytest.raises(ValueError, match="combine must be one of"):
        dr_fim(a, a, coef=1.0, combine="sum")
