"""Confidence intervals over seeds, paired differences and their tables (method.md §11)."""

from __future__ import annotations

import math

import pytest

from fishertune.cli.model_commands import parse_seeds
from fishertune.evaluation import AVERAGE_HEADER
from fishertune.evaluation.intervals import Interval, paired_interval, t_interval
from fishertune.reporting import interval_table, paired_intervals, paired_table
from test_reporting import domain_results


def test_t_interval_by_hand() -> None:
    # [1, 2, 3]: mean 2, s = 1, t_{0.975, 2} = 4.302653, half-width 4.302653 / √3 = 2.484138.
    interval = t_interval([1.0, 2.0, 3.0])
    assert interval.mean == pytest.approx(2.0)
    assert interval.half_width == pytest.approx(2.484138, abs=1e-6)
    assert interval.count == 3
    assert not interval.excludes_zero  # [−0.48, 4.48] holds 0
    assert (interval.low, interval.high) == (
        pytest.approx(-0.484138, abs=1e-6),
        pytest.approx(4.484138, abs=1e-6),
    )


def test_paired_interval_removes_the_shared_variation() -> None:
    # Two methods that move together over seeds: wide intervals each, a tight difference.
    a, b = [0.30, 0.50, 0.40], [0.28, 0.475, 0.385]
    assert t_interval(b).half_width > 0.2
    difference = paired_interval(a, b)
    assert difference.mean == pytest.approx(0.02)
    # differences [0.02, 0.025, 0.015]: s = 0.005, half-width 4.302653 · 0.005 / √3.
    assert difference.half_width == pytest.approx(4.302653 * 0.005 / math.sqrt(3), rel=1e-5)
    assert difference.excludes_zero
    with pytest.raises(ValueError, match="same seeds"):
        paired_interval(a, b[:2])


def test_one_seed_has_no_interval() -> None:
    interval = t_interval([0.5])
    assert math.isnan(interval.half_width)
    assert not interval.excludes_zero
    assert interval.format() == "50.00"
    assert Interval(0.1714, 0.0061, 3).format() == "17.14 ± 0.61"
    assert interval.to_dict() == {"mean": 0.5, "half_width": None, "count": 1}
    with pytest.raises(ValueError, match="at least one value"):
        t_interval([])


def test_tables_over_seeds() -> None:
    runs = {
        "freeze": [
            domain_results("freeze", {"source": s, "fog": f})
            for s, f in ((0.6, 0.4), (0.7, 0.5), (0.8, 0.6))
        ],
        "full": [
            domain_results("full", {"source": s, "fog": f})
            for s, f in ((0.7, 0.45), (0.8, 0.55), (0.9, 0.65))
        ],
    }
    table = interval_table(runs, "source")
    assert table.splitlines()[0] == (
        f"| Method: mIoU (%), mean ± 95% CI over 3 seeds | source | fog | {AVERAGE_HEADER} |"
    )
    assert "| freeze | 70.00 ± 24.84 | 50.00 ± 24.84 | 50.00 ± 24.84 |" in table
    paired = paired_table(runs, "freeze", "source")
    # full − freeze is +10 and +5 points at every seed: zero spread, resolved.
    assert "| full | 10.00 ± 0.00 * | 5.00 ± 0.00 * | 5.00 ± 0.00 * |" in paired
    assert set(paired_intervals(runs, "freeze", "source")) == {"full"}
    with pytest.raises(ValueError, match="not among the compared methods"):
        paired_intervals(runs, "rein", "source")


def test_parse_seeds() -> None:
    assert parse_seeds(None, 0) is None
    assert parse_seeds("3", 5) == [5, 6, 7]
    assert parse_seeds("0, 4,2", 9) == [0, 4, 2]
    assert parse_seeds("7,", 0) == [7]
    for bad, message in (("0", "positive"), ("a", "count"), ("1,1", "distinct")):
        with pytest.raises(ValueError, match=message):
            parse_seeds(bad, 0)
