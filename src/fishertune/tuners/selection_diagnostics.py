"""Where a sparse run's budget went, and how far each block's weights moved (method.md §2, §7).

The paper reads its selections by block and by Q / K / V / FFN (Fig. 3 trains such groups,
Fig. 6 maps the sensitivity over them). For the final selection of a sparse method
(:meth:`~fishertune.tuners.Tuner.selected`) :func:`selection_diagnostics` gives:

- the **share of the selected budget** per (block, kind): selected elements of the cell over
  all selected elements (the selection's count, which a finished run holds at its budget).
  Kinds are those of :func:`~fishertune.models.parameter_groups` (fused ``qkv`` tensors split
  row-wise into Q, K, V) with FFN1 and FFN2 pooled as FFN (the paper's θ_FFN, Eq. 3); the
  columns are Q, K, V, FFN and any other kind holding a selected element (O, norm, other).
  Elements outside the blocks (embeddings, tokens, when they are candidates) have block None;
- the **Gini coefficient** of the per-tensor selected fractions (selected over candidate
  elements of the tensor), each candidate tensor weighted by its number of candidate
  elements (:func:`weighted_gini`): 0 when every candidate tensor has the same fraction
  selected, towards 1 when the budget sits in a few tensors;
- the candidate tensors left with **no selected element**.

For every method that changes the backbone's own weights (full fine-tuning and the sparse
methods) :func:`weight_change_by_block` gives the relative change ‖θ_end − θ_pre‖ / ‖θ_pre‖ of
each block over *all* of the block's parameters, candidates or not, so that full and sparse
runs share one denominator; θ_pre is the backbone before tuning
(:meth:`~fishertune.tuners.Tuner.pretrained_backbone`) and θ_end its live weights now (not an
EMA average). :func:`tuning_diagnostics` gathers both for a tuner.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fishertune.evaluation.intervals import json_number
from fishertune.models.parameter_groups import ParameterGroup, parameter_groups
from fishertune.selection import Selection
from fishertune.tuners.base import Tuner

__all__ = [
    "BlockChange",
    "SelectionDiagnostics",
    "TuningDiagnostics",
    "selection_diagnostics",
    "tuning_diagnostics",
    "weight_change_by_block",
    "weighted_gini",
]

MAIN_KINDS = ("Q", "K", "V", "FFN")
"""Columns always shown: the paper's candidates, Eq. 3 (FFN = FFN1 + FFN2)."""
COLUMNS = (*MAIN_KINDS, "O", "norm", "other")
"""Every column, in order: the kinds of ``parameter_groups`` with FFN1 and FFN2 pooled."""

_POOLED = {"FFN1": "FFN", "FFN2": "FFN"}

Block = int | None
"""A block index, None for parameters outside the blocks."""


def _block_order(block: Block) -> tuple[bool, int]:
    """Blocks in increasing order, the parameters outside blocks last."""
    return (block is None, -1 if block is None else block)


def _cell_order(cell: tuple[Block, str]) -> tuple[tuple[bool, int], int]:
    return _block_order(cell[0]), COLUMNS.index(cell[1])


def _ratio(part: float, whole: float) -> float:
    return part / whole if whole else math.nan


def weighted_gini(values: Sequence[float], weights: Sequence[float]) -> float:
    """Gini coefficient of ``values`` with positive ``weights``:

        G = Σ_i Σ_j w_i w_j |x_i − x_j| / (2 W² μ),  W = Σ_i w_i,  μ = Σ_i w_i x_i / W,

    i.e. the Gini of a population in which value x_i occurs w_i times (here: each candidate
    element carries its tensor's selected fraction), computed exactly from the Lorenz curve,
    G = 1 − Σ_i (w_i / W)(L_{i−1} + L_i) over the values sorted increasingly (linear within a
    group of equal values). NaN when μ = 0 (nothing selected).
    """
    x = np.asarray(values, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if x.shape != w.shape or x.ndim != 1:
        raise ValueError(f"values and weights must be 1-D of one length, got {x.shape}, {w.shape}")
    if (w <= 0).any() or (x < 0).any():
        raise ValueError("weights must be positive and values non-negative")
    order = np.argsort(x, kind="stable")
    mass = (w * x)[order]
    total = mass.sum()
    if total == 0:
        return math.nan
    lorenz = np.cumsum(mass) / total
    below = np.concatenate([[0.0], lorenz[:-1]])
    return float(1.0 - np.sum(w[order] / w.sum() * (below + lorenz)))


@dataclass(frozen=True)
class SelectionDiagnostics:
    """Where the selected budget lies; see the module docstring.

    Attributes:
        selected: selected elements (the share's denominator).
        candidates: candidate elements.
        kinds: the columns: Q, K, V, FFN, then other kinds holding a selected element.
        counts: selected elements per (block, column), for every cell holding a candidate
            element of a column (0 where none is selected).
        gini: :func:`weighted_gini` of the candidate tensors' selected fractions weighted by
            their candidate elements; NaN when nothing is selected.
        tensors: candidate tensors (those holding a candidate element).
        empty: the candidate tensors with no selected element, in the backbone's order.
    """

    selected: int
    candidates: int
    kinds: tuple[str, ...]
    counts: Mapping[tuple[Block, str], int]
    gini: float
    tensors: int
    empty: tuple[str, ...]

    @property
    def blocks(self) -> list[Block]:
        """Blocks holding a candidate element, increasing, None (outside blocks) last."""
        return sorted({block for block, _ in self.counts}, key=_block_order)

    def share(self, block: Block, kind: str) -> float:
        """Share of the selected elements in (``block``, ``kind``); NaN with none selected."""
        return _ratio(self.counts.get((block, kind), 0), self.selected)

    def share_by_block(self) -> dict[Block, float]:
        """Share of the selected elements per block (all kinds)."""
        totals = dict.fromkeys(self.blocks, 0)
        for (block, _), count in self.counts.items():
            totals[block] += count
        return {block: _ratio(count, self.selected) for block, count in totals.items()}

    def share_by_kind(self) -> dict[str, float]:
        """Share of the selected elements per column (all blocks)."""
        totals = dict.fromkeys(self.kinds, 0)
        for (_, kind), count in self.counts.items():
            if kind in totals:
                totals[kind] += count
        return {kind: _ratio(count, self.selected) for kind, count in totals.items()}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: counts, shares (None for NaN), Gini, empty tensors."""
        return {
            "selected": self.selected,
            "candidates": self.candidates,
            "kinds": list(self.kinds),
            "cells": [
                {
                    "block": block,
                    "kind": kind,
                    "selected": count,
                    "share": json_number(self.share(block, kind)),
                }
                for (block, kind), count in sorted(
                    self.counts.items(), key=lambda item: _cell_order(item[0])
                )
            ],
            "share_by_block": [
                {"block": block, "share": json_number(share)}
                for block, share in self.share_by_block().items()
            ],
            "share_by_kind": {k: json_number(v) for k, v in self.share_by_kind().items()},
            "gini": json_number(self.gini),
            "gini_of": "per-tensor selected fractions, weighted by candidate elements",
            "candidate_tensors": self.tensors,
            "empty_tensors": list(self.empty),
        }


def selection_diagnostics(
    selection: Selection, groups: Sequence[ParameterGroup]
) -> SelectionDiagnostics:
    """The shares, Gini and empty tensors of ``selection`` over the candidates ``groups``.

    ``groups`` are the candidate elements as groups of
    :func:`~fishertune.models.parameter_groups` (a sparse tuner's
    :meth:`~fishertune.tuners.Tuner.selectable_groups`); each selected flat index is attributed
    to the group holding it (Q, K or V by its row in a fused ``qkv`` tensor). Every candidate
    tensor needs an entry in ``selection`` (a sparse tuner's has one); a selected element
    outside the groups raises ValueError.
    """
    by_name: dict[str, list[ParameterGroup]] = {}
    for group in groups:
        by_name.setdefault(group.name, []).append(group)
    outside = [n for n, index in selection.items() if n not in by_name and index.numel()]
    missing = [n for n in by_name if n not in selection]
    if outside or missing:
        raise ValueError(
            f"the selection and the candidate groups differ: selected elements in non-candidate "
            f"tensors {outside[:5]}, candidate tensors without an entry {missing[:5]}"
        )
    counts: dict[tuple[Block, str], int] = {}
    chosen: dict[str, int] = {}
    sizes: dict[str, int] = {}
    for name, own in by_name.items():
        mask = selection.mask(name)
        for group in own:
            part = mask[group.index]
            cell, count = (group.block, _POOLED.get(group.kind, group.kind)), int(part.sum())
            counts[cell] = counts.get(cell, 0) + count
            chosen[name] = chosen.get(name, 0) + count
            sizes[name] = sizes.get(name, 0) + part.numel()
        if chosen[name] != selection[name].numel():
            raise ValueError(f"{name}: selected elements outside the candidate groups")
    held = {kind for (_, kind), count in counts.items() if count}
    names = [n for n in by_name if sizes[n]]
    return SelectionDiagnostics(
        selected=selection.count,
        candidates=sum(sizes.values()),
        kinds=tuple(k for k in COLUMNS if k in MAIN_KINDS or k in held),
        counts=counts,
        gini=weighted_gini([chosen[n] / sizes[n] for n in names], [sizes[n] for n in names]),
        tensors=len(names),
        empty=tuple(n for n in names if chosen[n] == 0),
    )


@dataclass(frozen=True)
class BlockChange:
    """How far one block's parameters moved: ``change`` = ‖θ_end − θ_pre‖ and ``pretrained``
    = ‖θ_pre‖ (Frobenius norms over all the block's parameters, in float64); ``block`` is None
    for the parameters outside the blocks (embeddings, tokens, final norm)."""

    block: Block
    change: float
    pretrained: float

    @property
    def relative(self) -> float:
        """‖θ_end − θ_pre‖ / ‖θ_pre‖ (NaN for a block whose pretrained weights are all 0)."""
        return _ratio(self.change, self.pretrained)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, None for NaN."""
        return {
            "block": self.block,
            "change_norm": self.change,
            "pretrained_norm": self.pretrained,
            "relative": json_number(self.relative),
        }


def weight_change_by_block(
    pretrained: Iterable[tuple[str, Tensor]],
    tuned: Mapping[str, Tensor],
    groups: Sequence[ParameterGroup],
) -> tuple[BlockChange, ...]:
    """‖θ_end − θ_pre‖ and ‖θ_pre‖ per block over all the block's parameters.

    ``pretrained`` yields (name, θ_pre) per parameter (one tensor at a time is enough),
    ``tuned`` maps the same names to θ_end, ``groups`` (:func:`parameter_groups` of the
    backbone) gives each tensor's block. Blocks in increasing order, those outside blocks last.
    """
    block_of = {group.name: group.block for group in groups}
    change: dict[Block, float] = {}
    norm: dict[Block, float] = {}
    for name, before in pretrained:
        if name not in block_of or name not in tuned:
            raise ValueError(f"{name!r} is not a parameter of the tuned backbone")
        after = tuned[name].detach().to(torch.float64)
        start = before.detach().to(device=after.device, dtype=torch.float64)
        block = block_of[name]
        change[block] = change.get(block, 0.0) + float((after - start).square().sum())
        norm[block] = norm.get(block, 0.0) + float(start.square().sum())
    return tuple(
        BlockChange(block, math.sqrt(change[block]), math.sqrt(norm[block]))
        for block in sorted(change, key=_block_order)
    )


@dataclass(frozen=True)
class TuningDiagnostics:
    """A run's :class:`SelectionDiagnostics` (None for methods without a selection) and its
    weight change per block (None for methods that leave the backbone's weights as they are,
    or when the pretrained values were not kept)."""

    selection: SelectionDiagnostics | None
    weight_change: tuple[BlockChange, ...] | None

    def to_dict(self) -> dict[str, Any]:
        """``{"selection": ..., "weight_change": [...]}``, JSON-ready (None where absent)."""
        return {
            "selection": None if self.selection is None else self.selection.to_dict(),
            "weight_change": (
                None
                if self.weight_change is None
                else [change.to_dict() for change in self.weight_change]
            ),
        }


def tuning_diagnostics(tuner: Tuner) -> TuningDiagnostics:
    """The diagnostics of an applied ``tuner`` now, asking it (never its type) for its
    selection, candidates and pretrained backbone; see the module docstring."""
    backbone = tuner.segmentor.backbone
    selection = tuner.selected()
    chosen = (
        None if selection is None else selection_diagnostics(selection, tuner.selectable_groups())
    )
    pretrained = tuner.pretrained_backbone()
    change = (
        None
        if pretrained is None
        else weight_change_by_block(
            pretrained, dict(backbone.named_parameters()), parameter_groups(backbone)
        )
    )
    return TuningDiagnostics(chosen, change)
