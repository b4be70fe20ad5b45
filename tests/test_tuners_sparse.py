"""The sparse tuners: FisherTune, ChildTune-D / -F, random selection and manual groups."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from scipy.stats import spearmanr
from torch import Tensor

import fishertune.tuners.childtune
import fishertune.tuners.fishertune
import fishertune.tuners.manual
import fishertune.tuners.random_selection
from fishertune.models import Segmentor, build_segmentor, parameter_groups
from fishertune.optim import SparseAdamW
from fishertune.selection import Selection, top_k, trainable_fraction
from fishertune.sensitivity import diagonal_fisher
from fishertune.tuners import available_tuners, build_tuner
from fishertune.tuners.manual import parse_blocks
from fishertune.tuners.scoring import ScoredTuner
from fishertune.tuners.sparse import DELTA_SUFFIX, INDEX_SUFFIX, SparseTuner, parse_kinds
from tuner_harness import batch, tiny_segmentor, train_steps

DATA = [batch(seed=5), batch(seed=6)]
"""Two tiny source batches of two images for the estimation stage."""

CASES: list[tuple[str, dict[str, Any]]] = [
    ("fishertune", {"variational_steps": 4, "refresh_every": 3}),
    ("childtune_d", {}),
    ("childtune_f", {}),
    ("random", {}),
    ("random", {"group": "V"}),
    ("manual", {"blocks": "1-2", "kinds": "Q,FFN"}),
]
CASE_IDS = [f"{name}-{'-'.join(map(str, opts.values())) or 'default'}" for name, opts in CASES]


def segmentor() -> Segmentor:
    """The harness ViT with LayerScale 1 (DINOv2's 1e-5 init makes backbone gradients ~1e-9)."""
    return tiny_segmentor(init_values=1.0)


def prepared(name: str, **options: Any) -> SparseTuner:
    """A sparse tuner applied to a fresh tiny segmentor, its estimation stage run if it has one."""
    tuner = build_tuner(name, segmentor(), **options)
    assert isinstance(tuner, SparseTuner)
    if isinstance(tuner, ScoredTuner):
        tuner.estimate(DATA)
    return tuner


def backbone_copy(model: Segmentor) -> dict[str, Tensor]:
    return {n: p.detach().clone() for n, p in model.backbone.named_parameters()}


def selected(masks: dict[str, Tensor]) -> int:
    return sum(int(m.sum()) for m in masks.values())


def kind_masks(
    model: Segmentor, kinds: set[str], blocks: set[int] | None = None
) -> dict[str, Tensor]:
    """Masks of the elements of the given kinds (and blocks) from ``parameter_groups``."""
    params = dict(model.backbone.named_parameters())
    masks = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in params.items()}
    for g in parameter_groups(model.backbone):
        if g.block is not None and g.kind in kinds and (blocks is None or g.block in blocks):
            masks[g.name][g.index] = True
    return masks


@dataclass
class Trained:
    """A tuner after estimation and 8 training steps, its options, backbone before, losses."""

    options: dict[str, Any]
    tuner: SparseTuner
    before: dict[str, Tensor]
    losses: list[float]


@pytest.fixture(scope="module", params=CASES, ids=CASE_IDS)
def trained(request: pytest.FixtureRequest) -> Trained:
    name, options = request.param
    tuner = prepared(name, **options)
    before = backbone_copy(tuner.segmentor)
    return Trained(options, tuner, before, train_steps(tuner))


def test_registered() -> None:
    assert {"fishertune", "childtune_d", "childtune_f", "random", "manual"} <= set(
        available_tuners()
    )


def test_trains_only_the_selection(trained: Trained) -> None:
    tuner, before, losses = trained.tuner, trained.before, trained.losses
    assert sum(losses[-2:]) < sum(losses[:2]), losses
    masks = tuner.selection.as_masks()
    changed = 0
    for name, param in tuner.segmentor.backbone.named_parameters():
        moved = param.detach() != before[name]
        allowed = masks.get(name, torch.zeros_like(moved))
        assert not bool((moved & ~allowed).any()), f"unselected elements of {name} changed"
        assert param.requires_grad == bool(allowed.any())
        changed += int(moved.sum())
    assert changed > 0
    count = tuner.count()
    assert count.backbone == tuner.budget()
    assert count.decoder > 0
    expected = tuner.candidate_count if tuner.name == "childtune_f" else tuner.budget()
    assert tuner.selected_count == selected(masks) == expected


def test_save_and_load_reproduce_the_tuned_model(trained: Trained, tmp_path: Path) -> None:
    tuner = trained.tuner
    path = tmp_path / "tuned.safetensors"
    state = tuner.saved_state()
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))

    fresh = segmentor()
    pretrained = backbone_copy(fresh)
    fresh_tuner = build_tuner(tuner.name, fresh, **trained.options)
    fresh_tuner.load_saved(load_file(str(path)))
    images, _ = batch(seed=3)
    tuner.segmentor.eval()
    fresh.eval()
    assert torch.equal(tuner.segmentor.predict(images), fresh.predict(images))
    tuned = dict(tuner.segmentor.backbone.named_parameters())
    for name, param in fresh.backbone.named_parameters():
        assert torch.equal(param, tuned[name]), name
    assert isinstance(fresh_tuner, SparseTuner)
    restored = fresh_tuner.selection.as_masks()
    for name, mask in tuner.selection.as_masks().items():
        assert torch.equal(restored[name], mask), name

    backbone_bytes = sum(p.numel() * p.element_size() for p in tuned.values())
    saved_backbone = {k: v for k, v in state.items() if k.startswith("backbone.")}
    saved_bytes = sum(v.numel() * v.element_size() for v in saved_backbone.values())
    masks = tuner.selection.as_masks()
    deltas = 0
    for key, value in saved_backbone.items():
        name = key.removeprefix("backbone.").removesuffix(DELTA_SUFFIX).removesuffix(INDEX_SUFFIX)
        if key.endswith(DELTA_SUFFIX):
            deltas += 1
            index = state[f"backbone.{name}{INDEX_SUFFIX}"].long()
            moved = tuned[name].detach().reshape(-1)[index].double()
            assert torch.equal(value, moved - pretrained[name].reshape(-1)[index].double())
        elif not key.endswith(INDEX_SUFFIX):
            assert bool(masks[name].all()), f"{name} is saved whole but only partly selected"
    if tuner.name in ("fishertune", "childtune_d", "random"):
        assert deltas > 0
        assert saved_bytes < 0.25 * backbone_bytes


def test_load_saved_rejects_foreign_keys() -> None:
    tuner = prepared("random")
    state = tuner.saved_state()
    fresh = build_tuner("random", segmentor())
    with pytest.raises(ValueError, match="lacks"):
        fresh.load_saved({**state, "nonsense.weight": torch.zeros(1)})
    bad_delta = {"backbone.model.pos_embed:delta": torch.zeros(1)}
    with pytest.raises(ValueError, match="no matching index"):
        fresh.load_saved({**state, **bad_delta})


@pytest.mark.parametrize("allocation", ["global", "per_tensor", "shuffled"])
def test_growth_follows_the_schedule_and_stays_nested(allocation: str) -> None:
    total_steps, refresh = 10, 3
    tuner = prepared(
        "fishertune", estimator="diagonal", refresh_every=refresh, allocation=allocation
    )
    assert isinstance(tuner, ScoredTuner)
    total = tuner.backbone_total
    assert tuner.selected_count == round(0.01 * total)  # δ_min right after estimation
    optimizer = tuner.make_optimizer()
    assert isinstance(optimizer, SparseAdamW)
    params = tuner.candidate_params()
    previous = tuner.selection.as_masks()
    for step in range(total_steps):
        tuner.on_step(step, total_steps)
        masks = tuner.selection.as_masks()
        if step % refresh == 0 or step == total_steps - 1:
            fraction = trainable_fraction(step, total_steps - 1, 0.01, 0.05)
            assert selected(masks) == round(fraction * total), step
        else:
            assert selected(masks) == selected(previous), step
        for name, mask in masks.items():
            assert bool(mask[previous[name]].all()), f"{name} lost elements at step {step}"
            state = optimizer.state[params[name]]
            in_optimizer = state["indices"].numel() if "indices" in state else mask.numel()
            assert in_optimizer == int(mask.sum()), name
            if "indices" in state:  # one selection: the optimiser holds the tuner's tensors
                assert state["indices"] is tuner.selection[name], name
            assert params[name].requires_grad == bool(mask.any()), name
        previous = masks
    assert tuner.selected_count == tuner.budget() == round(0.05 * total)


def test_select_refuses_foreign_tensors_shapes_and_shrinking() -> None:
    tuner = prepared("fishertune", estimator="diagonal")
    assert isinstance(tuner, ScoredTuner)
    current = tuner.selection
    name = next(n for n in current if current[n].numel() > 1)
    shape = current.shape(name)
    with pytest.raises(ValueError, match=r"hold no candidate element: \['nope'\]"):
        tuner.select(Selection({"nope": torch.tensor([0])}, {"nope": (1,)}))
    with pytest.raises(ValueError, match=rf"selection of '{name}': shape \({shape.numel()},\)"):
        tuner.select(Selection({name: torch.tensor([0])}, {name: (shape.numel(),)}))
    shrunk = Selection({name: current[name][1:]}, {name: shape})
    with pytest.raises(ValueError, match=rf"may only grow: the new selection of '{name}' drops"):
        tuner.select(shrunk)
    assert tuner.selection is current  # nothing changed


def test_constant_schedule_selects_the_budget_at_once() -> None:
    tuner = prepared("fishertune", estimator="diagonal", schedule="constant", count=1000)
    assert tuner.selected_count == tuner.budget() == 1000
    tuner.on_step(0, 5)
    assert tuner.selected_count == 1000


def test_variants_give_different_masks() -> None:
    """F, dF and DRF rank differently; with ``combine="paper"`` DRF = F + c·ΔF (Eq. 7).

    With the diagonal estimator the dimensionless ΔF (~1e-2 here) swamps F (~1e-9) unless c is
    small, so the shift scale s = 8 (c = e^-16) makes all three rankings differ.
    """
    scale = 8.0
    scores, masks = {}, {}
    for variant in ("F", "dF", "DRF"):
        tuner = prepared(
            "fishertune",
            estimator="diagonal",
            variant=variant,
            combine="paper",
            schedule="constant",
            perturbation_scale=scale,
        )
        assert isinstance(tuner, ScoredTuner)
        scores[variant], masks[variant] = tuner.scores, tuner.selection.as_masks()
    for a, b in (("F", "dF"), ("F", "DRF"), ("dF", "DRF")):
        assert any(not torch.equal(masks[a][n], masks[b][n]) for n in masks[a]), (a, b)
    coef = math.exp(-2 * scale)
    for name, drf in scores["DRF"].items():
        torch.testing.assert_close(drf, scores["F"][name] + coef * scores["dF"][name])


def test_variational_estimator_combines_by_eq_15() -> None:
    scores, masks = {}, {}
    for variant in ("F", "dF", "DRF"):
        tuner = prepared(
            "fishertune",
            variant=variant,
            variational_steps=4,
            schedule="constant",
            combine="paper",
        )
        assert isinstance(tuner, ScoredTuner)
        scores[variant], masks[variant] = tuner.scores, tuner.selection.as_masks()
        assert all(bool(s.isfinite().all()) for s in tuner.scores.values())
    assert any(not torch.equal(masks["F"][n], masks["dF"][n]) for n in masks["F"])
    coef = math.exp(-2.0)
    for name, drf in scores["DRF"].items():
        torch.testing.assert_close(drf, scores["F"][name] + coef * scores["dF"][name])


@pytest.mark.parametrize("estimator", ["diagonal", "variational"])
def test_default_combination_is_normalised_and_reports_the_domain_term(estimator: str) -> None:
    """DRF = F/mean(F) + c·ΔF̃/mean(ΔF̃) over the candidates (method.md §5), and the estimate
    reports how much of the DRF selection is the F and the ΔF̃ selection, and ρ(F, ΔF̃)."""
    options = {"estimator": estimator, "variational_steps": 4, "schedule": "constant"}
    tuners = {v: prepared("fishertune", variant=v, **options) for v in ("F", "dF", "DRF")}
    scores = {v: tuner.scores for v, tuner in tuners.items()}  # type: ignore[attr-defined]

    def mean(values: dict[str, Tensor]) -> float:
        finite = torch.cat([v[v.isfinite()].flatten() for v in values.values()])
        return float(finite.double().mean())

    coef = math.exp(-2.0)
    f_mean, d_mean = mean(scores["F"]), mean(scores["dF"])
    for name, drf in scores["DRF"].items():
        finite = drf.isfinite()
        want = scores["F"][name] / f_mean + coef * scores["dF"][name] / d_mean
        torch.testing.assert_close(drf[finite], want[finite].float())
    term = tuners["DRF"].quality.domain_term  # type: ignore[attr-defined]
    assert term is not None
    assert term.combine == "normalised"
    assert term.coef == coef
    budget = tuners["DRF"].budget()
    assert term.count == budget
    drf_selection = tuners["DRF"].selection
    assert term.overlap_f == drf_selection.overlap(tuners["F"].selection) / budget
    assert term.overlap_df == drf_selection.overlap(tuners["dF"].selection) / budget
    f_flat = torch.cat([v[v.isfinite()] for v in scores["F"].values()]).double().numpy()
    d_flat = torch.cat([v[v.isfinite()] for v in scores["dF"].values()]).double().numpy()
    assert term.spearman_f_df == pytest.approx(spearmanr(f_flat, d_flat).statistic, abs=1e-6)
    assert tuners["F"].quality.domain_term is None  # type: ignore[attr-defined]
    described = "\n".join(tuners["DRF"].quality.describe())  # type: ignore[attr-defined]
    assert "domain term: DRF (normalised" in described


def test_the_printed_eq_15_warns_that_the_domain_term_does_not_count() -> None:
    tuner = prepared("fishertune", variational_steps=4, schedule="constant", combine="paper")
    term = tuner.quality.domain_term  # type: ignore[attr-defined]
    assert term is not None
    assert term.overlap_f == 1.0
    warnings = tuner.quality.warnings()  # type: ignore[attr-defined]
    assert any(
        "is 100.0% the F selection; the domain term ΔF does not count" in w for w in warnings
    )


def test_childtune_d_is_the_top_k_of_the_fisher_among_candidates() -> None:
    tuner = prepared("childtune_d", candidates="Q,K")
    assert isinstance(tuner, ScoredTuner)
    model = tuner.segmentor
    candidates = kind_masks(model, {"Q", "K"})
    params = tuner.candidate_params()
    fisher = diagonal_fisher(model, DATA, params=params, labels="given")
    chosen = Selection.from_masks({n: candidates[n] for n in params})
    want = top_k(fisher, count=tuner.budget(), candidates=chosen).as_masks()
    masks = tuner.selection.as_masks()
    for name, mask in masks.items():
        assert torch.equal(mask, want[name]), name
        assert bool(tuner.scores[name][~candidates[name]].eq(-math.inf).all())
    assert selected(masks) == tuner.budget()


def test_childtune_f_scales_surviving_gradients() -> None:
    tuner = build_tuner("childtune_f", segmentor(), candidates="Q,FFN")
    assert isinstance(tuner, fishertune.tuners.childtune.ChildTuneFTuner)
    p = tuner.keep_probability
    assert p == pytest.approx(tuner.budget() / tuner.candidate_count)
    tuner.make_optimizer()
    params = tuner.candidate_params()
    candidates = kind_masks(tuner.segmentor, {"Q", "FFN1", "FFN2"})
    draws = []
    for _ in range(2):
        grads = {n: torch.randn_like(prm) + 3.0 for n, prm in params.items()}  # never zero
        for name, param in params.items():
            param.grad = grads[name].clone()
        tuner.after_backward()
        kept = {}
        for name, param in params.items():
            grad = param.grad
            assert grad is not None
            kept[name] = grad != 0
            assert not bool(kept[name][~candidates[name]].any())
            assert torch.equal(grad[kept[name]], grads[name][kept[name]] / p)
        survivors = selected(kept)
        spread = math.sqrt(tuner.budget() * (1 - p))
        assert abs(survivors - tuner.budget()) < 5 * spread
        draws.append(kept)
    assert any(not torch.equal(draws[0][n], draws[1][n]) for n in params)


def test_random_group_selects_only_that_group() -> None:
    tuner = prepared("random", group="Q", seed=3)
    q = kind_masks(tuner.segmentor, {"Q"})
    masks = tuner.selection.as_masks()
    assert selected(masks) == tuner.budget() == round(0.05 * tuner.backbone_total)
    for name, mask in masks.items():
        assert not bool((mask & ~q[name]).any()), name
    same = prepared("random", group="Q", seed=3).selection.as_masks()
    other = prepared("random", group="Q", seed=4).selection.as_masks()
    assert all(torch.equal(same[n], masks[n]) for n in masks)
    assert any(not torch.equal(other[n], masks[n]) for n in masks)


def test_manual_selects_exactly_the_listed_groups() -> None:
    for blocks in ("1-2", [2, 1]):
        tuner = prepared("manual", blocks=blocks, kinds="Q,FFN")
        want = kind_masks(tuner.segmentor, {"Q", "FFN1", "FFN2"}, blocks={1, 2})
        masks = tuner.selection.as_masks()
        assert set(masks) == {n for n, m in want.items() if bool(m.any())}
        for name, mask in masks.items():
            assert torch.equal(mask, want[name]), name
        assert tuner.count().backbone == selected(masks)
    assert parse_blocks("0,3-5") == (0, 3, 4, 5)
    assert parse_kinds("Q, FFN") == ("Q", "FFN1", "FFN2")
    with pytest.raises(ValueError, match=r"blocks \[9\] do not exist"):
        build_tuner("manual", segmentor(), blocks="2,9")


@pytest.mark.parametrize("name", ["fishertune", "childtune_d"])
def test_training_needs_the_estimation_stage(name: str) -> None:
    options = {"variational_steps": 2} if name == "fishertune" else {}
    tuner = build_tuner(name, segmentor(), **options)
    assert isinstance(tuner, ScoredTuner)
    with pytest.raises(RuntimeError, match=r"call tuner.estimate\(batches\) first"):
        tuner.make_optimizer()
    with pytest.raises(RuntimeError, match=r"call tuner.estimate\(batches\) first"):
        tuner.on_step(0, 10)
    assert tuner.saved_state()  # the decoder: nothing of the backbone changed yet
    tuner.estimate(iter(DATA))  # a one-shot iterator is fine
    with pytest.raises(RuntimeError, match="estimate\\(\\) runs once"):
        tuner.estimate(DATA)


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("fishertune", {"fraction": 0.05, "count": 10}, "not both"),
        ("fishertune", {"variant": "G"}, "variant must be one of"),
        ("fishertune", {"combine": "sum"}, "combine must be one of"),
        ("fishertune", {"allocation": "layer"}, "allocation must be one of"),
        ("childtune_d", {"allocation": "per-tensor"}, "allocation must be one of"),
        ("fishertune", {"estimator": "exact"}, "estimator must be one of"),
        ("fishertune", {"labels": "batch"}, "needs estimator='diagonal'"),
        ("fishertune", {"count": 100}, "min_fraction=0.01 exceeds"),
        ("fishertune", {"candidates": "Q,X"}, "unknown parameter kind 'X'"),
        ("random", {"group": "O"}, "group must be one of"),
        ("random", {"group": "Q", "fraction": 0.5}, "exceeds the 4224 candidate elements"),
        ("manual", {"blocks": "3-1"}, "empty block range"),
        ("childtune_d", {"labels": "gold"}, "labels must be one of"),
    ],
)
def test_invalid_options(name: str, options: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_tuner(name, segmentor(), **options)


@pytest.fixture(scope="module")
def vit_large() -> Segmentor:
    with torch.device("meta"):
        return build_segmentor("vit_large_patch14_dinov2", img_size=518)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("fishertune", {}),
        ("childtune_d", {}),
        ("childtune_f", {}),
        ("random", {}),
        ("random", {"group": "Q"}),
    ],
)
def test_vit_large_budget_is_five_percent(
    vit_large: Segmentor, name: str, options: dict[str, Any]
) -> None:
    total = sum(p.numel() for p in vit_large.backbone.parameters())
    tuner = build_tuner(name, copy.deepcopy(vit_large), **options)
    assert tuner.count().backbone == round(0.05 * total)  # 15.22M of 304.37M at 518 px
    assert isinstance(tuner, SparseTuner)
    per_block_qkv = 1024 * 1024 + 1024  # one of Q / K / V: weight rows and bias
    if options.get("group") == "Q":
        assert tuner.candidate_count == 24 * per_block_qkv
    else:  # Q, K, V and both FFN linears of 24 blocks
        assert tuner.candidate_count == 24 * (3 * per_block_qkv + 2 * 4096 * 1024 + 4096 + 1024)


def test_vit_large_manual_and_absolute_counts(vit_large: Segmentor) -> None:
    manual = build_tuner("manual", copy.deepcopy(vit_large), blocks="12-23", kinds="Q,K")
    assert manual.count().backbone == 12 * 2 * (1024 * 1024 + 1024)
    fixed = build_tuner("fishertune", copy.deepcopy(vit_large), count=15_210_000)
    assert fixed.count().backbone == 15_210_000
