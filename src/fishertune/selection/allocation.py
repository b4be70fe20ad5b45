"""Where a score-based selection puts its budget: global, per tensor, or shuffled (§7).

The paper ranks all candidate elements on one global scale (method.md §7, Eq. 16), which lets a
few tensors take most of the budget. Two alternatives separate *where* the budget goes from
*which* elements are picked:

- ``"global"`` (the paper's, the default): :func:`~fishertune.selection.top_k` over all
  candidates;
- ``"per_tensor"``: every candidate tensor gets a share of the budget proportional to its number
  of candidate elements, filled by score within the tensor. The shares are rounded by the
  Sainte-Laguë (Webster) divisor method: seat j (0-based) of a tensor with n candidates has the
  priority (j + ½)/n, seats go in order of priority (ties: earlier tensor first), and the
  seat-j element is the tensor's (j+1)-th highest scoring candidate. A larger budget therefore
  takes a superset, so growth stays nested and exact (the divisor method has no Alabama paradox);
- ``"shuffled"``: the per-tensor counts that the global top-k gives, each tensor's count drawn
  at random among its candidates (fixed random keys, so a larger budget again takes a superset):
  the control that keeps global top-k's allocation and discards its choice of elements.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from fishertune.selection.selection import Selection
from fishertune.selection.topk import top_k

__all__ = ["ALLOCATIONS", "allocated_top_k", "per_tensor_priorities"]

ALLOCATIONS = ("global", "per_tensor", "shuffled")
"""The allocations of a score-based selection; ``"global"`` is the paper's (the default)."""


def per_tensor_priorities(scores: Mapping[str, Tensor], candidates: Selection) -> dict[str, Tensor]:
    """Scores whose global top-k is the per-tensor proportional top-k (module docstring).

    A candidate ranked j-th (0-based; score descending, ties by flat index) among the n
    candidates of its tensor gets −(j + ½)/n (float64); other elements get −inf.
    """
    out = {}
    for name, score in scores.items():
        flat = score.detach().reshape(-1)
        index = candidates[name].to(device=flat.device, dtype=torch.int64)
        priority = torch.full(flat.shape, -torch.inf, dtype=torch.float64, device=flat.device)
        n = index.numel()
        if n:
            order = torch.sort(flat[index].double(), descending=True, stable=True).indices
            seats = torch.arange(n, dtype=torch.float64, device=flat.device)
            priority[index[order]] = -(seats + 0.5) / n
        out[name] = priority.reshape(score.shape)
    return out


def allocated_top_k(
    scores: Mapping[str, Tensor],
    count: int,
    *,
    allocation: str,
    candidates: Selection,
    keep: Selection | None = None,
    random_keys: Mapping[str, Tensor] | None = None,
) -> Selection:
    """Exactly ``count`` candidate elements chosen by ``scores`` under ``allocation``.

    ``keep`` (e.g. the previous selection of a growing schedule) stays selected; with the same
    scores (and, for ``"shuffled"``, the same ``random_keys``: one float tensor per score
    tensor, drawn once) a larger ``count`` gives a superset in every mode.
    """
    if allocation == "global":
        return top_k(scores, count=count, candidates=candidates, keep=keep)
    if allocation == "per_tensor":
        priorities = per_tensor_priorities(scores, candidates)
        return top_k(priorities, count=count, candidates=candidates, keep=keep)
    if allocation != "shuffled":
        raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {allocation!r}")
    if random_keys is None or set(random_keys) != set(scores):
        raise ValueError("allocation='shuffled' needs random_keys for every score tensor")
    counts = top_k(scores, count=count, candidates=candidates)
    chosen: dict[str, Tensor] = {}
    for name in scores:
        restrict = [name]
        own_keep = None if keep is None or name not in keep else keep.restrict(restrict)
        part = top_k(
            {name: random_keys[name]},
            count=counts[name].numel(),
            candidates=candidates.restrict(restrict),
            keep=own_keep,
        )
        chosen[name] = part[name]
    return Selection._trusted(chosen, {name: s.shape for name, s in scores.items()})
