"""Where a score-based selection puts its budget: global, per tensor, shuffled (§7)."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from torch import Tensor

from fishertune.selection import Selection, allocated_top_k, per_tensor_priorities, top_k


def _scores(seed: int = 0) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    # one tensor with much larger scores, so that global top-k concentrates the budget there
    return {
        "big": torch.rand(6, 5, generator=generator) * 10,
        "mid": torch.rand(17, generator=generator),
        "small": torch.rand(3, 4, generator=generator) * 0.1,
    }


def _everything(scores: dict[str, Tensor]) -> Selection:
    return Selection.whole({n: s.shape for n, s in scores.items()})


def _keys(scores: dict[str, Tensor], seed: int) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {n: torch.rand(s.shape, generator=generator) for n, s in scores.items()}


def _webster(sizes: list[int], count: int) -> list[int]:
    """Sainte-Laguë by brute force: give seats one by one to the largest n / (2s + 1)."""
    seats = [0] * len(sizes)
    for _ in range(count):
        best = max(
            (i for i in range(len(sizes)) if seats[i] < sizes[i]),
            key=lambda i: (Fraction(sizes[i], 2 * seats[i] + 1), -i),
        )
        seats[best] += 1
    return seats


def test_per_tensor_by_hand() -> None:
    scores = {"a": torch.tensor([5.0, 1.0, 4.0, 2.0, 3.0, 0.0]), "b": torch.tensor([9.0, 8.0])}
    candidates = _everything(scores)
    # priorities a: 1/12, 3/12, 5/12, 7/12 ...; b: 1/4, 3/4: four seats go 3 to a, 1 to b
    chosen = allocated_top_k(scores, 4, allocation="per_tensor", candidates=candidates)
    assert chosen["a"].tolist() == [0, 2, 4]
    assert chosen["b"].tolist() == [0]
    want = torch.tensor([-0.5, -4.5, -1.5, -3.5, -2.5, -5.5], dtype=torch.float64) / 6
    assert torch.equal(per_tensor_priorities(scores, candidates)["a"], want)


@pytest.mark.parametrize("count", [1, 7, 20, 33, 43])
def test_per_tensor_counts_are_sainte_lague_and_the_top_of_each_tensor(count: int) -> None:
    scores = _scores()
    candidates = Selection.from_masks(
        {
            n: torch.rand(s.shape, generator=torch.Generator().manual_seed(9)) < 0.8
            for n, s in scores.items()
        }
    )
    chosen = allocated_top_k(scores, count, allocation="per_tensor", candidates=candidates)
    sizes = [candidates[n].numel() for n in scores]
    assert [chosen[n].numel() for n in scores] == _webster(sizes, count)
    for name, score in scores.items():
        own = top_k(
            {name: score}, count=chosen[name].numel(), candidates=candidates.restrict([name])
        )
        assert torch.equal(chosen[name], own[name]), name


def test_shuffled_keeps_the_global_counts_and_draws_the_elements() -> None:
    scores, count = _scores(), 25
    candidates = _everything(scores)
    glob = top_k(scores, count=count, candidates=candidates)
    assert glob["big"].numel() == 25  # the global top-k concentrates in one tensor here
    keys = _keys(scores, 1)
    shuffled = allocated_top_k(
        scores, count, allocation="shuffled", candidates=candidates, random_keys=keys
    )
    assert {n: v.numel() for n, v in shuffled.items()} == {n: v.numel() for n, v in glob.items()}
    assert not torch.equal(shuffled["big"], glob["big"])
    want = top_k({"big": keys["big"]}, count=25)["big"]  # the 25 largest random keys
    assert torch.equal(shuffled["big"], want)
    other = allocated_top_k(
        scores, count, allocation="shuffled", candidates=candidates, random_keys=_keys(scores, 2)
    )
    assert not torch.equal(other["big"], shuffled["big"])


@pytest.mark.parametrize("allocation", ["global", "per_tensor", "shuffled"])
def test_growth_is_nested_and_exact(allocation: str) -> None:
    scores = _scores(4)
    candidates = _everything(scores)
    keys = _keys(scores, 3)
    previous: Selection | None = None
    for count in (0, 3, 4, 11, 30, 31, 50, 59):
        chosen = allocated_top_k(
            scores,
            count,
            allocation=allocation,
            candidates=candidates,
            keep=previous,
            random_keys=keys,
        )
        assert chosen.count == count
        fresh = allocated_top_k(
            scores, count, allocation=allocation, candidates=candidates, random_keys=keys
        )
        assert all(torch.equal(chosen[n], fresh[n]) for n in scores)  # keep changes nothing
        if previous is not None:
            assert chosen.overlap(previous) == previous.count
        previous = chosen


def test_bad_allocations() -> None:
    scores = _scores()
    with pytest.raises(ValueError, match="allocation must be one of"):
        allocated_top_k(scores, 3, allocation="blocks", candidates=_everything(scores))
    with pytest.raises(ValueError, match="needs random_keys for every score tensor"):
        allocated_top_k(scores, 3, allocation="shuffled", candidates=_everything(scores))
