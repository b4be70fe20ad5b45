"""The Selection type: sorted flat indices per tensor, as the selectors make and tuners share."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fishertune.selection import Selection, index_dtype, mark_trainable, random_selection, top_k


def test_from_masks_holds_sorted_row_major_indices_and_round_trips() -> None:
    mask = torch.tensor([[False, True, False], [True, False, True]])
    selection = Selection.from_masks({"w": mask, "e": torch.zeros(4, dtype=torch.bool)})
    assert selection["w"].tolist() == [1, 3, 5]
    assert selection["w"].dtype == torch.int32
    assert selection.count == 3
    assert selection.numel == 10
    assert selection.shape("w") == (2, 3)
    assert list(selection) == ["w", "e"]
    assert torch.equal(selection.mask("w"), mask)
    assert not selection.as_masks()["e"].any()
    assert not selection.is_whole("w")
    assert Selection.whole({"w": (2, 3)}).is_whole("w")
    assert Selection.empty({"w": (2, 3)}).count == 0


def test_index_dtype_switches_to_int64_at_two_to_the_31() -> None:
    assert index_dtype(2**31 - 1) == torch.int32
    assert index_dtype(2**31) == torch.int64


@pytest.mark.parametrize(
    ("index", "error", "match"),
    [
        (torch.tensor([0, 2, 2]), ValueError, "sorted and unique"),
        (torch.tensor([3, 1]), ValueError, "sorted and unique"),
        (torch.tensor([0, 6]), ValueError, "out of range for 6 elements"),
        (torch.tensor([-1, 2]), ValueError, "out of range"),
        (torch.tensor([0.0, 1.0]), TypeError, "integer tensor"),
        (torch.tensor([[0, 1]]), TypeError, "1-D"),
        (torch.tensor([True, False]), TypeError, "integer tensor"),
    ],
)
def test_constructor_rejects_invalid_indices(
    index: torch.Tensor, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        Selection({"w": index}, {"w": (2, 3)})


def test_constructor_and_from_masks_errors_name_the_tensor() -> None:
    with pytest.raises(ValueError, match=r"name different tensors: \['v'\]"):
        Selection({"w": torch.tensor([0])}, {"w": (2,), "v": (3,)})
    with pytest.raises(TypeError, match=r"keep\['w'\] must be a bool tensor, got torch.float32"):
        Selection.from_masks({"w": torch.ones(3)}, "keep")


def test_grow_keeps_nested_and_refuses_to_drop_elements() -> None:
    small = Selection({"a": torch.tensor([1, 4]), "b": torch.tensor([0])}, {"a": (6,), "b": (2,)})
    larger = Selection({"a": torch.tensor([1, 2, 4])}, {"a": (6,)})
    grown = small.grow(larger)
    assert grown["a"].tolist() == [1, 2, 4]
    assert grown["b"].tolist() == [0]  # not named by `larger`: kept
    assert grown["a"] is larger["a"]  # the grown entry is the larger selection's own tensor
    assert small["a"].tolist() == [1, 4]  # selections are immutable
    with pytest.raises(ValueError, match=r"may only grow: the new selection of 'a' drops"):
        small.grow(Selection({"a": torch.tensor([1, 2])}, {"a": (6,)}))
    with pytest.raises(ValueError, match=r"names tensors not selected from: \['c'\]"):
        small.grow(Selection({"c": torch.tensor([0])}, {"c": (1,)}))
    with pytest.raises(ValueError, match=r"shape \(3, 2\) differs from \(6,\)"):
        small.grow(Selection({"a": torch.tensor([1, 4])}, {"a": (3, 2)}))


def test_restrict_and_overlap() -> None:
    a = Selection({"x": torch.tensor([0, 2, 3]), "y": torch.tensor([1])}, {"x": (4,), "y": (2,)})
    b = Selection({"x": torch.tensor([2, 3]), "y": torch.tensor([0])}, {"x": (4,), "y": (2,)})
    assert a.overlap(b) == 2
    only_x = a.restrict({"x"})
    assert list(only_x) == ["x"]
    assert only_x["x"] is a["x"]


def test_top_k_returns_a_selection_of_the_scores_tensors() -> None:
    scores = {"a": torch.tensor([[0.5, 3.0], [2.0, 1.0]]), "b": torch.tensor([4.0, 0.1])}
    selection = top_k(scores, count=3)
    assert isinstance(selection, Selection)
    assert selection["a"].tolist() == [1, 2]
    assert selection["b"].tolist() == [0]
    assert selection.shape("a") == (2, 2)
    assert all(index.dtype == torch.int32 for index in selection.values())
    # keep= takes a Selection; the result holds the kept elements, sorted
    kept = Selection(
        {"a": torch.tensor([3]), "b": torch.tensor([], dtype=torch.long)}, {"a": (2, 2), "b": (2,)}
    )
    grown = top_k(scores, count=3, keep=kept)
    assert grown["a"].tolist() == [1, 3]
    assert grown["b"].tolist() == [0]
    with pytest.raises(TypeError, match="candidates must be a Selection"):
        top_k(scores, count=1, candidates={"a": torch.ones(2, 2, dtype=torch.bool)})  # type: ignore[arg-type]


def test_random_selection_stays_within_candidates() -> None:
    candidates = Selection({"w": torch.arange(0, 100, 2)}, {"w": (10, 10)})
    drawn = random_selection(
        {"w": (10, 10)}, count=20, candidates=candidates, generator=torch.Generator().manual_seed(0)
    )
    assert drawn.count == 20
    assert bool(torch.isin(drawn["w"], candidates["w"]).all())


def test_mark_trainable_follows_the_selection() -> None:
    params = {"a": nn.Parameter(torch.zeros(3)), "b": nn.Parameter(torch.zeros(2))}
    params["a"].requires_grad_(False)
    mark_trainable(
        Selection(
            {"a": torch.tensor([1]), "b": torch.tensor([], dtype=torch.long)},
            {"a": (3,), "b": (2,)},
        ),
        params,
    )
    assert params["a"].requires_grad
    assert not params["b"].requires_grad
