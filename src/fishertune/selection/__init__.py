"""Scores to masks: exact global top-k, random subsets, element groups, growth schedule (§7).

- :func:`topk_masks`: exact global top-k across many tensors (radix select, no sort).
- :func:`random_masks`: a uniformly random subset of the same budget (baselines).
- :class:`GroupSlice`, :func:`group_masks`, :func:`qkv_slices`: restrict to Q / K / V / FFN or
  layer groups, also inside fused tensors.
- :func:`trainable_fraction`: the share trainable at each tuning step (grow or constant).
"""

from __future__ import annotations

from fishertune.selection.groups import QKV_GROUPS, GroupSlice, group_masks, qkv_slices
from fishertune.selection.random_subset import random_masks
from fishertune.selection.schedule import SCHEDULE_KINDS, trainable_fraction
from fishertune.selection.topk import topk_masks

__all__ = [
    "QKV_GROUPS",
    "SCHEDULE_KINDS",
    "GroupSlice",
    "group_masks",
    "qkv_slices",
    "random_masks",
    "topk_masks",
    "trainable_fraction",
]
