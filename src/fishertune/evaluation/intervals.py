"""Confidence intervals over seeds and paired differences between methods (method.md §11).

A seed fixes a run's decoder initialisation, data order, augmentation and the estimators'
draws, and every method of a comparison runs with the same seeds: two methods' results at one
seed share the scenes and their order, so their difference per seed removes that shared
variation. The interval of the mean of n values is mean ± t_{0.975, n−1} · s / √n (Student t,
s the sample standard deviation); for two methods it is taken over the per-seed differences.
A difference is *resolved* when its interval excludes 0; a claim on it is *supported* when it
excludes 0 in the claimed direction, *contradicted* when it excludes 0 the other way, *not
resolved* otherwise (:func:`verdict`), and a set of claims is supported when all are,
contradicted when any is (:func:`combined_verdict`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from scipy.stats import t as student_t

__all__ = [
    "CONFIDENCE",
    "CONTRADICTED",
    "NOT_RESOLVED",
    "SUPPORTED",
    "Interval",
    "Row",
    "column_intervals",
    "combined_verdict",
    "json_number",
    "number",
    "paired_columns",
    "paired_interval",
    "t_interval",
    "verdict",
]

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """A mean with the half-width of its confidence interval.

    Attributes:
        mean: the mean of the values.
        half_width: t_{(1+c)/2, n−1} · s / √n; NaN with fewer than two values.
        count: n, the number of values (seeds).
    """

    mean: float
    half_width: float
    count: int

    @property
    def low(self) -> float:
        """mean − half-width."""
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        """mean + half-width."""
        return self.mean + self.half_width

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies wholly above or below 0 (False when it is undefined)."""
        return not math.isnan(self.half_width) and (self.low > 0 or self.high < 0)

    def format(self, scale: float = 100.0, digits: int = 2) -> str:
        """E.g. ``17.14 ± 0.61`` (values × ``scale``); the mean alone with one value."""
        mean = f"{self.mean * scale:.{digits}f}"
        if math.isnan(self.mean):
            return "-"
        if math.isnan(self.half_width):
            return mean
        return f"{mean} ± {self.half_width * scale:.{digits}f}"

    def to_dict(self) -> dict[str, float | int | None]:
        """JSON-ready fields (NaN as None; :meth:`from_dict` reads them back)."""
        return {
            "mean": json_number(self.mean),
            "half_width": json_number(self.half_width),
            "count": self.count,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Interval:
        """Inverse of :meth:`to_dict`."""
        return cls(number(data["mean"]), number(data["half_width"]), int(data["count"]))


def json_number(value: float) -> float | None:
    """``value`` for JSON: None for NaN (JSON has no NaN)."""
    return None if math.isnan(value) else float(value)


def number(value: float | None) -> float:
    """A :func:`json_number` read back: NaN for None."""
    return math.nan if value is None else float(value)


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """The mean of ``values`` with its Student-t confidence half-width."""
    if not values:
        raise ValueError("an interval needs at least one value")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return Interval(mean, math.nan, n)
    variance = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    quantile = float(student_t.ppf((1.0 + confidence) / 2.0, n - 1))
    return Interval(mean, quantile * math.sqrt(variance / n), n)


def paired_interval(
    values: Sequence[float], reference: Sequence[float], confidence: float = CONFIDENCE
) -> Interval:
    """The mean per-seed difference ``values[i] − reference[i]`` with its interval (the two
    sequences are in the same seed order)."""
    if len(values) != len(reference):
        raise ValueError(
            f"paired values need the same seeds: {len(values)} vs {len(reference)} values"
        )
    return t_interval([a - b for a, b in zip(values, reference, strict=True)], confidence)


Row = Mapping[str, float]
"""One run's numbers by column (e.g. mIoU per domain, the target average, the loss)."""


def column_intervals(rows: Sequence[Row]) -> dict[str, Interval]:
    """Per column that every row has, the :func:`t_interval` of its values over the rows
    (one row per seed), in the first row's column order."""
    if not rows:
        raise ValueError("intervals over seeds need at least one run")
    return {
        column: t_interval([row[column] for row in rows])
        for column in rows[0]
        if all(column in row for row in rows)
    }


def paired_columns(rows: Sequence[Row], reference: Sequence[Row]) -> dict[str, Interval]:
    """Per column of ``rows`` (one per seed), the :func:`paired_interval` of its values to
    those of ``reference`` (the same seeds, in the same order)."""
    if len(rows) != len(reference) or not rows:
        raise ValueError(f"paired values need the same seeds: {len(rows)} vs {len(reference)} runs")
    return {
        column: paired_interval([row[column] for row in rows], [r[column] for r in reference])
        for column in rows[0]
        if all(column in row for row in (*rows, *reference))
    }


SUPPORTED = "supported"
CONTRADICTED = "contradicted"
NOT_RESOLVED = "not resolved"


def verdict(difference: Interval, higher: bool) -> str:
    """A claim's verdict from its paired ``difference`` (arm − reference): :data:`SUPPORTED`
    when the interval excludes 0 on the claimed side (``higher``: above 0),
    :data:`CONTRADICTED` when it excludes 0 on the other, :data:`NOT_RESOLVED` otherwise."""
    if not difference.excludes_zero:
        return NOT_RESOLVED
    return SUPPORTED if (difference.mean > 0) == higher else CONTRADICTED


def combined_verdict(verdicts: Sequence[str]) -> str:
    """Several claims' verdict: supported when every one is, contradicted when any is, not
    resolved otherwise (and with no claim)."""
    if verdicts and all(v == SUPPORTED for v in verdicts):
        return SUPPORTED
    return CONTRADICTED if CONTRADICTED in verdicts else NOT_RESOLVED
