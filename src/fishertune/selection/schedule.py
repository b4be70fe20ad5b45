"""The trainable-share schedule of FisherTune (paper Eq. 16, Algorithm 1; method.md §7)."""

from __future__ import annotations

import math

__all__ = ["SCHEDULE_KINDS", "trainable_fraction"]

SCHEDULE_KINDS = ("grow", "constant")


def trainable_fraction(
    step: int, total_steps: int, dmin: float, dmax: float, kind: str = "grow"
) -> float:
    """Share of the budget population that is trainable at tuning step ``step`` (method.md §7).

    ``kind="grow"``: p(t) = dmin + (dmax − dmin) · (1 − e^{−t/T}) / (1 − e^{−1}) with
    t = ``step`` clamped to [0, T], T = ``total_steps``; so p(0) = dmin, p(T) = dmax and p is
    monotone non-decreasing. The paper's Eq. 16 read literally makes the share *decrease*
    over training, while its text says the selection grows; following method.md we take the
    growing reading, normalised so that the endpoints are exactly dmin and dmax.
    ``kind="constant"``: dmax at every step (the paper's "5% fine-tunable" ablation).

    Pass it as ``fraction=`` (with ``total=`` the population size and ``keep=`` the previous
    selection) to :func:`~fishertune.selection.top_k` to grow a nested selection.
    """
    if kind not in SCHEDULE_KINDS:
        raise ValueError(f"kind must be one of {SCHEDULE_KINDS}, got {kind!r}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be at least 1, got {total_steps}")
    if not 0.0 <= dmin <= dmax <= 1.0:
        raise ValueError(f"need 0 <= dmin <= dmax <= 1, got dmin={dmin}, dmax={dmax}")
    t = min(max(step, 0), total_steps)
    if kind == "constant" or t == total_steps:
        return float(dmax)
    growth = (1.0 - math.exp(-t / total_steps)) / (1.0 - math.exp(-1.0))
    return min(dmin + (dmax - dmin) * growth, dmax)
