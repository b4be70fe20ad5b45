"""Which elements train: exact global top-k, random subsets, element groups, growth (§7).

- :class:`Selection`: per tensor, the sorted flat indices of the selected elements; what every
  selector returns, a sparse tuner holds and :class:`~fishertune.optim.SparseAdamW` updates.
- :func:`top_k`: exact global top-k across many tensors (radix select, no sort);
  :func:`budget_count` / :func:`check_fraction`: a budget share and its one range check.
- :func:`allocated_top_k`: the same budget placed globally, per tensor or shuffled
  (:data:`ALLOCATIONS`).
- :func:`random_selection`: a uniformly random subset of the same budget (baselines).
- :class:`GroupSlice`, :func:`group_selection`, :func:`qkv_slices`: restrict to Q / K / V / FFN
  or layer groups, also inside fused tensors.
- :func:`trainable_fraction`: the share trainable at each tuning step (grow or constant).
- :func:`mark_trainable`: ``requires_grad`` on exactly the tensors holding a selected element.
"""

from __future__ import annotations

from fishertune.selection.allocation import ALLOCATIONS, allocated_top_k, per_tensor_priorities
from fishertune.selection.groups import QKV_GROUPS, GroupSlice, group_selection, qkv_slices
from fishertune.selection.random_subset import random_selection
from fishertune.selection.schedule import SCHEDULE_KINDS, trainable_fraction
from fishertune.selection.selection import Selection, index_dtype, mark_trainable
from fishertune.selection.topk import budget_count, check_fraction, top_k

__all__ = [
    "ALLOCATIONS",
    "QKV_GROUPS",
    "SCHEDULE_KINDS",
    "GroupSlice",
    "Selection",
    "allocated_top_k",
    "budget_count",
    "check_fraction",
    "group_selection",
    "index_dtype",
    "mark_trainable",
    "per_tensor_priorities",
    "qkv_slices",
    "random_selection",
    "top_k",
    "trainable_fraction",
]
