"""Tests of fishertune.selection: exact global top-k, groups, random subsets, the schedule."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping

import pytest
import torch
from torch import Tensor

from fishertune.selection import (
    GroupSlice,
    Selection,
    group_selection,
    qkv_slices,
    random_selection,
    top_k,
    trainable_fraction,
)
from fishertune.selection import topk as topk_module

SHAPES = {"a": (7, 5), "b": (13,), "c": (3, 4, 6)}


def reference_topk(
    scores: Mapping[str, Tensor],
    k: int,
    eligible: Mapping[str, Tensor] | None = None,
    keep: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Independent reference: concatenate, stable sort by (-score, position), take the first."""
    values = torch.cat([s.reshape(-1).double() for s in scores.values()]).tolist()
    elig = [True] * len(values)
    if eligible is not None:
        elig = torch.cat([eligible[n].reshape(-1) for n in scores]).tolist()
    kept = [False] * len(values)
    if keep is not None:
        kept = torch.cat(
            [
                keep[n].reshape(-1) if n in keep else torch.zeros(s.numel(), dtype=torch.bool)
                for n, s in scores.items()
            ]
        ).tolist()
    candidates = [i for i in range(len(values)) if elig[i] and not kept[i]]
    ordered = sorted(candidates, key=lambda i: (-values[i], i))
    chosen = torch.tensor(kept, dtype=torch.bool)
    chosen[ordered[: k - sum(kept)]] = True
    out, start = {}, 0
    for name, s in scores.items():
        out[name] = chosen[start : start + s.numel()].view(s.shape)
        start += s.numel()
    return out


def make_scores(kind: str, dtype: torch.dtype, seed: int = 0) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in SHAPES.items():
        if kind == "ties":
            values = torch.randint(-3, 4, shape, generator=gen).to(torch.float64)
        else:
            values = torch.randn(shape, generator=gen, dtype=torch.float64)
        out[name] = values.to(dtype)
    return out


def topk_masks(
    scores: Mapping[str, Tensor],
    fraction: float | None = None,
    count: int | None = None,
    *,
    total: int | None = None,
    eligible: Mapping[str, Tensor] | None = None,
    keep: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """:func:`top_k` with candidates, kept elements and the result as bool masks."""
    selection = top_k(
        scores,
        fraction,
        count,
        total=total,
        candidates=None if eligible is None else Selection.from_masks(eligible, "candidates"),
        keep=None if keep is None else Selection.from_masks(keep, "keep"),
    )
    return selection.as_masks()


def group_masks(
    shapes: Mapping[str, tuple[int, ...]], groups: list[GroupSlice], wanted: str | list[str]
) -> dict[str, Tensor]:
    return group_selection(shapes, groups, wanted).as_masks()


def random_masks(
    shapes: Mapping[str, tuple[int, ...]],
    fraction: float | None = None,
    count: int | None = None,
    *,
    total: int | None = None,
    eligible: Mapping[str, Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    candidates = None if eligible is None else Selection.from_masks(eligible, "candidates")
    return random_selection(
        shapes, fraction, count, total=total, candidates=candidates, generator=generator
    ).as_masks()


def total_selected(masks: Mapping[str, Tensor]) -> int:
    return sum(int(m.sum()) for m in masks.values())


def assert_same_masks(got: Mapping[str, Tensor], want: Mapping[str, Tensor]) -> None:
    assert list(got) == list(want)
    for name in want:
        assert got[name].dtype == torch.bool
        assert got[name].shape == want[name].shape
        assert torch.equal(got[name], want[name]), name


# --------------------------------------------------------------------------- topk_masks


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["normal", "ties"])
@pytest.mark.parametrize("k", [0, 1, 17, 60, 119, 120])
def test_topk_matches_reference(dtype: torch.dtype, kind: str, k: int) -> None:
    scores = make_scores(kind, dtype)
    masks = topk_masks(scores, count=k)
    assert total_selected(masks) == k
    assert_same_masks(masks, reference_topk(scores, k))


@pytest.mark.parametrize("chunk", [3, 11])
def test_topk_across_chunks_and_mixed_dtypes(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    monkeypatch.setattr(topk_module, "CHUNK_ELEMENTS", chunk)
    scores = make_scores("ties", torch.float32, seed=3)
    scores["b"] = scores["b"].double()  # one float64 tensor switches to 64-bit keys
    for k in (9, 50, 101):
        assert_same_masks(topk_masks(scores, count=k), reference_topk(scores, k))


def test_topk_large_random_against_reference() -> None:
    gen = torch.Generator().manual_seed(1)
    scores = {
        "x": torch.rand(20_000, generator=gen),
        "y": torch.randint(0, 50, (100, 80), generator=gen).float() / 50,
        "z": -torch.rand(3000, generator=gen).double(),
    }
    for k in (1, 4321, 29_000):
        assert_same_masks(topk_masks(scores, count=k), reference_topk(scores, k))


def test_topk_handles_scalar_and_empty_tensors() -> None:
    scores = {"s": torch.tensor(2.0), "e": torch.empty(0, 3), "v": torch.tensor([1.0, 3.0])}
    masks = topk_masks(scores, count=2)
    assert masks["s"].shape == ()
    assert bool(masks["s"])
    assert masks["e"].shape == (0, 3)
    assert masks["v"].tolist() == [False, True]


@pytest.mark.parametrize(
    ("fraction", "total", "expected"),
    [(0.25, None, 2), (0.35, None, 4), (0.05, None, 0), (1.0, None, 10), (0.05, 1000, 50)],
)
def test_fraction_uses_python_round(fraction: float, total: int | None, expected: int) -> None:
    # 10 scored elements, 100 when a larger budget population is given
    n = 10 if total is None else 100
    scores = {"w": torch.arange(n, dtype=torch.float32)}
    masks = topk_masks(scores, fraction=fraction, total=total)
    assert total_selected(masks) == expected == round(fraction * (total or n))
    assert masks["w"][n - expected :].all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_signed_zeros_are_equal(dtype: torch.dtype) -> None:
    scores = {"a": torch.tensor([-0.0, 0.0, -0.0, 0.0], dtype=dtype)}
    assert topk_masks(scores, count=2)["a"].tolist() == [True, True, False, False]
    split = {"a": torch.tensor([-0.0], dtype=dtype), "b": torch.tensor([0.0], dtype=dtype)}
    assert topk_masks(split, count=1)["a"].tolist() == [True]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_infinities_rank_at_the_extremes(dtype: torch.dtype) -> None:
    inf = math.inf
    scores = {"a": torch.tensor([1.0, inf, -inf, -1e30, inf, 0.0], dtype=dtype)}
    assert topk_masks(scores, count=2)["a"].tolist() == [False, True, False, False, True, False]
    assert topk_masks(scores, count=5)["a"].tolist() == [True, True, False, True, True, True]
    assert topk_masks(scores, count=6)["a"].all()


def test_ties_follow_mapping_order_then_flat_index() -> None:
    scores = {"b": torch.ones(2, 2), "a": torch.ones(3)}
    masks = topk_masks(scores, count=5)
    assert masks["b"].all()
    assert masks["a"].tolist() == [True, False, False]


def test_eligible_elements_only() -> None:
    scores = make_scores("ties", torch.float32, seed=5)
    gen = torch.Generator().manual_seed(6)
    eligible = {n: torch.rand(s.shape, generator=gen) < 0.5 for n, s in scores.items()}
    n_eligible = total_selected(eligible)
    for k in (0, 11, n_eligible):
        masks = topk_masks(scores, count=k, eligible=eligible)
        assert_same_masks(masks, reference_topk(scores, k, eligible=eligible))
        assert not any((masks[n] & ~eligible[n]).any() for n in scores)
    masks = topk_masks(scores, fraction=0.5, eligible=eligible)
    assert total_selected(masks) == round(0.5 * n_eligible)


def test_keep_stays_selected_and_counts_toward_budget() -> None:
    scores = {"w": torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])}
    keep = {"w": torch.tensor([False, False, False, False, True])}
    assert topk_masks(scores, count=3, keep=keep)["w"].tolist() == [True, True, False, False, True]
    assert topk_masks(scores, count=1, keep=keep)["w"].tolist() == [False] * 4 + [True]


def test_keep_makes_masks_nested_when_scores_are_reestimated() -> None:
    first = make_scores("normal", torch.float32, seed=7)
    second = make_scores("normal", torch.float32, seed=8)
    small = topk_masks(first, count=20)
    grown = topk_masks(second, count=45, keep=small)
    assert total_selected(grown) == 45
    assert all((small[n] & ~grown[n]).sum() == 0 for n in first)
    assert_same_masks(grown, reference_topk(second, 45, keep=small))
    # without keep the re-estimated selection is not nested (the test data make sure of it)
    assert any((small[n] & ~topk_masks(second, count=45)[n]).any() for n in first)


def test_growing_count_gives_nested_masks_with_ties() -> None:
    scores = make_scores("ties", torch.float16, seed=9)
    previous = topk_masks(scores, count=0)
    for k in range(0, 121, 8):
        masks = topk_masks(scores, count=k)
        assert total_selected(masks) == k
        assert all((previous[n] & ~masks[n]).sum() == 0 for n in scores)
        previous = masks


def test_masks_share_device_and_shape_of_scores() -> None:
    scores = make_scores("normal", torch.float32)
    masks = topk_masks(scores, fraction=0.3)
    for name, score in scores.items():
        assert masks[name].shape == score.shape
        assert masks[name].device == score.device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_topk_on_cuda_matches_cpu() -> None:
    gen = torch.Generator().manual_seed(11)
    scores = {
        "a": torch.randint(0, 100, (3000, 700), generator=gen).float(),
        "b": torch.randn(5000, generator=gen).double(),
    }
    cuda_scores = {n: s.cuda() for n, s in scores.items()}
    eligible = {n: torch.rand(s.shape, generator=gen) < 0.8 for n, s in scores.items()}
    for k in (1, 123_457, 1_000_000):
        want = topk_masks(scores, count=k, eligible=eligible)
        got = topk_masks(cuda_scores, count=k, eligible=eligible)
        assert all(got[n].is_cuda for n in got)
        assert_same_masks({n: m.cpu() for n, m in got.items()}, want)


SCORES = {"a": torch.arange(6.0).view(2, 3), "b": torch.ones(4)}


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({}, ValueError, "exactly one of fraction= or count="),
        ({"fraction": 0.5, "count": 2}, ValueError, "exactly one of"),
        ({"fraction": -0.1}, ValueError, r"fraction must lie in \[0, 1\]"),
        ({"fraction": 1.5}, ValueError, r"fraction must lie in \[0, 1\]"),
        ({"fraction": math.nan}, ValueError, r"fraction must lie in \[0, 1\]"),
        ({"count": -1}, ValueError, "count must be non-negative"),
        ({"count": 11}, ValueError, "exceeds the 10 candidate elements"),
        ({"fraction": 0.5, "total": 30}, ValueError, "= 15 exceeds the 10 candidate"),
        ({"count": 2, "total": 30}, ValueError, "total= only applies with fraction="),
        (
            {"count": 1, "eligible": {"a": torch.ones(3, 2, dtype=torch.bool)}},
            ValueError,
            r"candidates\['a'\] has shape \(3, 2\)",
        ),
        (
            {"count": 1, "keep": {"b": torch.ones(5, dtype=torch.bool)}},
            ValueError,
            r"keep\['b'\] has shape",
        ),
        (
            {"count": 1, "eligible": {"a": torch.ones(2, 3, dtype=torch.bool)}},
            ValueError,
            r"candidates has no entry for scores\['b'\]",
        ),
        ({"count": 1, "keep": {"zz": torch.ones(1, dtype=torch.bool)}}, ValueError, "'zz'"),
        ({"count": 1, "eligible": {"a": torch.ones(2, 3), "b": torch.ones(4)}}, TypeError, "bool"),
        (
            {
                "count": 2,
                "eligible": {"a": torch.ones(2, 3, dtype=torch.bool), "b": torch.zeros(4) > 0},
                "keep": {"b": torch.tensor([False, True, False, False])},
            },
            ValueError,
            r"keep\['b'\] contains elements that are not candidates",
        ),
        (
            {"count": 1, "keep": {"b": torch.tensor([True, True, False, False])}},
            ValueError,
            "keep holds 2 elements, more than the 1 to select",
        ),
    ],
)
def test_topk_errors(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        topk_masks(SCORES, **kwargs)  # type: ignore[arg-type]


def test_topk_rejects_nan_naming_the_tensor() -> None:
    scores = {"good": torch.ones(3), "blocks.0.mlp": torch.tensor([1.0, math.nan])}
    with pytest.raises(ValueError, match=r"scores\['blocks.0.mlp'\] contains NaN"):
        topk_masks(scores, count=1)


def test_topk_rejects_integer_scores() -> None:
    with pytest.raises(TypeError, match=r"scores\['i'\].*floating-point"):
        topk_masks({"i": torch.arange(4)}, count=1)


# --------------------------------------------------------------------------- groups

C = 4
QKV_SHAPES = {"attn.qkv.weight": (3 * C, C), "attn.qkv.bias": (3 * C,), "mlp.fc1.weight": (8, C)}
QKV_GROUPS_LIST = [
    *qkv_slices("attn.qkv.weight", QKV_SHAPES["attn.qkv.weight"]),
    *qkv_slices("attn.qkv.bias", QKV_SHAPES["attn.qkv.bias"]),
    GroupSlice("mlp.fc1.weight", (), "ffn"),
]


@pytest.mark.parametrize(
    ("group", "rows"), [("q", (0, C)), ("k", (C, 2 * C)), ("v", (2 * C, 3 * C))]
)
def test_group_masks_split_fused_qkv_rows(group: str, rows: tuple[int, int]) -> None:
    masks = group_masks(QKV_SHAPES, QKV_GROUPS_LIST, group)
    expected = torch.zeros(3 * C, dtype=torch.bool)
    expected[rows[0] : rows[1]] = True
    assert torch.equal(masks["attn.qkv.weight"], expected[:, None].expand(3 * C, C))
    assert torch.equal(masks["attn.qkv.bias"], expected)
    assert not masks["mlp.fc1.weight"].any()


def test_group_masks_union_and_whole_tensor() -> None:
    masks = group_masks(QKV_SHAPES, QKV_GROUPS_LIST, ["q", "ffn"])
    assert masks["mlp.fc1.weight"].all()
    assert masks["attn.qkv.weight"][:C].all()
    assert not masks["attn.qkv.weight"][C:].any()
    assert total_selected(masks) == C * C + C + 8 * C


def test_group_masks_column_slice() -> None:
    groups = [GroupSlice("w", (slice(None), slice(1, 3)), "cols")]
    masks = group_masks({"w": (2, 4)}, groups, "cols")
    assert masks["w"].tolist() == [[False, True, True, False]] * 2


@pytest.mark.parametrize(
    ("groups", "wanted", "match"),
    [
        ([GroupSlice("nope", (), "q")], "q", "'nope' is not in shapes"),
        ([GroupSlice("w", (slice(0, 9),), "q")], "q", "out of range for dimension 0 of size 6"),
        ([GroupSlice("w", (slice(0, 1), slice(-7, None)), "q")], "q", "dimension 1 of size 2"),
        ([GroupSlice("w", (slice(0, 1),) * 3, "q")], "q", "3 slices for a tensor of shape"),
        ([GroupSlice("w", (slice(0, 3),), "q")], ["q", "K"], r"wanted groups \['K'\]"),
    ],
)
def test_group_masks_errors(groups: list[GroupSlice], wanted: list[str] | str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        group_masks({"w": (6, 2)}, groups, wanted)


def test_qkv_slices_rejects_non_multiple_of_three() -> None:
    with pytest.raises(ValueError, match="3C"):
        qkv_slices("w", (10, 4))


# --------------------------------------------------------------------------- random_masks


def test_random_masks_exact_count_and_reproducible() -> None:
    first = random_masks(SHAPES, count=37, generator=torch.Generator().manual_seed(0))
    again = random_masks(SHAPES, count=37, generator=torch.Generator().manual_seed(0))
    other = random_masks(SHAPES, count=37, generator=torch.Generator().manual_seed(1))
    assert total_selected(first) == 37
    assert_same_masks(again, first)
    assert any(not torch.equal(first[n], other[n]) for n in SHAPES)
    assert all(first[n].shape == torch.Size(SHAPES[n]) for n in SHAPES)


def test_random_masks_restricted_to_group() -> None:
    eligible = group_masks(QKV_SHAPES, QKV_GROUPS_LIST, "k")
    gen = torch.Generator().manual_seed(2)
    masks = random_masks(QKV_SHAPES, fraction=0.5, eligible=eligible, generator=gen)
    assert total_selected(masks) == round(0.5 * (C * C + C))
    assert all(not (masks[n] & ~eligible[n]).any() for n in QKV_SHAPES)


def test_random_masks_budget_of_larger_population() -> None:
    masks = random_masks(SHAPES, fraction=0.1, total=500, generator=torch.Generator())
    assert total_selected(masks) == 50


def test_random_masks_spread_uniformly_over_positions() -> None:
    masks = random_masks({"w": (20, 1000)}, count=5000, generator=torch.Generator().manual_seed(4))
    per_row = masks["w"].sum(dim=1)
    # each row of 1000 holds about 250 selected elements (hypergeometric sd ≈ 12)
    assert per_row.min() > 190
    assert per_row.max() < 310


# --------------------------------------------------------------------------- schedule


@pytest.mark.parametrize(("dmin", "dmax", "T"), [(0.01, 0.05, 100), (0.0, 1.0, 1), (0.2, 0.2, 7)])
def test_schedule_endpoints_and_monotone(dmin: float, dmax: float, T: int) -> None:
    values = [trainable_fraction(t, T, dmin, dmax) for t in range(T + 1)]
    assert values[0] == dmin
    assert values[-1] == dmax
    assert all(a <= b for a, b in itertools.pairwise(values))
    assert all(dmin <= v <= dmax for v in values)


def test_schedule_midpoint_follows_formula() -> None:
    expected = 0.01 + 0.04 * (1 - math.exp(-0.5)) / (1 - math.exp(-1))
    assert trainable_fraction(50, 100, 0.01, 0.05) == pytest.approx(expected, rel=1e-12)
    assert trainable_fraction(50, 100, 0.01, 0.05) > 0.03  # concave: above the straight line


def test_schedule_clamps_steps() -> None:
    assert trainable_fraction(250, 100, 0.01, 0.05) == 0.05
    assert trainable_fraction(-3, 100, 0.01, 0.05) == 0.01


@pytest.mark.parametrize("step", [-1, 0, 37, 100, 1000])
def test_schedule_constant_kind(step: int) -> None:
    assert trainable_fraction(step, 100, 0.01, 0.05, kind="constant") == 0.05


@pytest.mark.parametrize(
    ("args", "kind", "match"),
    [
        ((0, 0, 0.1, 0.2), "grow", "total_steps must be at least 1"),
        ((0, 10, 0.3, 0.2), "grow", "0 <= dmin <= dmax <= 1"),
        ((0, 10, -0.1, 0.2), "grow", "0 <= dmin <= dmax <= 1"),
        ((0, 10, 0.1, 1.2), "grow", "0 <= dmin <= dmax <= 1"),
        ((0, 10, 0.1, math.nan), "grow", "0 <= dmin <= dmax <= 1"),
        ((0, 10, 0.1, 0.2), "linear", r"kind must be one of \('grow', 'constant'\)"),
    ],
)
def test_schedule_validation(args: tuple[int, int, float, float], kind: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        trainable_fraction(*args, kind=kind)
