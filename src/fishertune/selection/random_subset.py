"""Uniformly random element subsets (the random-selection baselines, paper Table 4)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from fishertune.selection.selection import Selection
from fishertune.selection.topk import top_k

__all__ = ["random_selection"]


def random_selection(
    shapes: Mapping[str, torch.Size | Sequence[int]],
    fraction: float | None = None,
    count: int | None = None,
    *,
    total: int | None = None,
    candidates: Selection | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Selection:
    """A uniformly random subset of exactly the budget among the candidate elements.

    Budget, ``total`` and ``candidates`` mean the same as in
    :func:`~fishertune.selection.top_k`: this draws an i.i.d. uniform float64 score per
    element (in the order of ``shapes``, from ``generator``; on its device, else on
    ``device``) and takes their top-k, so every subset of the right size is equally likely
    (float64 draws make ties practically impossible) and a seeded generator reproduces the
    selection. The indices live on ``device`` (default CPU).
    """
    draw_device = device if generator is None else generator.device
    scores = {
        name: torch.rand(
            tuple(shape), generator=generator, dtype=torch.float64, device=draw_device
        ).to(device)
        for name, shape in shapes.items()
    }
    return top_k(scores, fraction, count, total=total, candidates=candidates)
