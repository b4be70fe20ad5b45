"""Is a benchmark a scientific instrument? Validity criteria checked on the baselines.

A comparison can only show an effect of FisherTune, or a broken baseline, if the task is
learned, the domain shift is real and the intervals are narrow enough to resolve differences of
the size the paper reports. These criteria are checked on the baselines (full fine-tuning and
the frozen backbone), so that a benchmark's settings are chosen before any FisherTune number
is seen (method.md §11):

- V1 the task is learned: full fine-tuning reaches ≥ 60 mIoU on the source validation scenes,
  and person, pole, traffic sign and car each ≥ 30 IoU there (means over seeds);
- V2 the domain gap is real: the frozen backbone's target average is ≥ 10 points below its
  source mIoU;
- V3 resolving power: each method's target average has a 95% half-width ≤ 1.0 mIoU over the
  seeds, and the paired difference Full − Freeze one ≤ 0.7 (needs ≥ 2 seeds; the target is
  stated for 3).

Two measures are reported without being criteria: whether full fine-tuning keeps a smaller share
of its source mIoU on the targets than the frozen backbone (the over-fitting Rein's Fig. 5 shows
on real VFMs), and Spearman's rank correlation between the baselines' target averages and the
paper's Table 1 DINOv2-L rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from scipy.stats import spearmanr

from fishertune.evaluation.domains import AVERAGE_HEADER, DomainResults
from fishertune.reporting.report import SeedRuns, paired_intervals, seed_intervals

__all__ = [
    "LEARNED_CLASSES",
    "PAPER_TABLE1_DINOV2_L",
    "Check",
    "Validity",
    "check_validity",
]

LEARNED_MIOU = 0.60
LEARNED_CLASSES = ("person", "pole", "traffic sign", "car")
LEARNED_CLASS_IOU = 0.30
GAP = 0.10
TARGET_HALF_WIDTH = 0.010
PAIRED_HALF_WIDTH = 0.007
PAPER_TABLE1_DINOV2_L: Mapping[str, float] = {
    "full": 61.7,
    "lora": 62.7,
    "adaptformer": 62.7,
    "vqt": 63.1,
    "childtune_d": 63.4,
    "rein": 64.3,
}
"""Average mIoU of the baselines in the paper's Table 1 (DINOv2-L, GTAV → Cityscapes, BDD100K,
Mapillary); the paper's "ChildTune" is read as ChildTune-D, the Fisher-masked variant."""


@dataclass(frozen=True)
class Check:
    """One criterion: its name, whether it holds (None: not measurable here) and what was
    measured."""

    name: str
    passed: bool | None
    measured: str

    @property
    def verdict(self) -> str:
        """``pass``, ``fail`` or ``not measured``."""
        return {True: "pass", False: "fail", None: "not measured"}[self.passed]


@dataclass(frozen=True)
class Validity:
    """The checks V1–V3 and the two reported measures."""

    checks: list[Check]
    measures: dict[str, str] = field(default_factory=dict)

    def table(self) -> str:
        """Markdown: a row per check, then the measures."""
        lines = ["| criterion | verdict | measured |", "| --- | --- | --- |"]
        lines += [f"| {c.name} | {c.verdict} | {c.measured} |" for c in self.checks]
        lines += [f"| {name} | reported | {text} |" for name, text in self.measures.items()]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "checks": [
                {"name": c.name, "passed": c.passed, "measured": c.measured} for c in self.checks
            ],
            "measures": dict(self.measures),
        }


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values) if values else math.nan


def _source_of(results: DomainResults, source: str | None) -> float:
    return results.domains[source].miou if source and source in results.domains else math.nan


def _class_iou(results: Sequence[DomainResults], source: str, name: str) -> float:
    values = []
    for r in results:
        if name not in r.class_names or source not in r.domains:
            return math.nan
        values.append(r.domains[source].iou[r.class_names.index(name)])
    return _mean(values)


def _learned(runs: SeedRuns, source: str | None) -> Check:
    name = "V1 the task is learned (full: source ≥ 60, person/pole/sign/car ≥ 30 IoU)"
    full = runs.get("full")
    if not full or source is None:
        return Check(name, None, "needs the method full and a source validation set")
    miou = _mean([_source_of(r, source) for r in full])
    classes = {c: _class_iou(full, source, c) for c in LEARNED_CLASSES}
    passed = miou >= LEARNED_MIOU and all(v >= LEARNED_CLASS_IOU for v in classes.values())
    text = f"source {100 * miou:.1f}; " + ", ".join(
        f"{c} {100 * v:.1f}" for c, v in classes.items()
    )
    return Check(name, passed, text)


def _gap(runs: SeedRuns, source: str | None) -> Check:
    name = "V2 the domain gap is real (freeze: targets ≥ 10 below source)"
    freeze = runs.get("freeze")
    if not freeze or source is None:
        return Check(name, None, "needs the method freeze and a source validation set")
    intervals = seed_intervals({"freeze": freeze}, source)["freeze"]
    src, targets = intervals[source].mean, intervals[AVERAGE_HEADER].mean
    gap = src - targets
    return Check(
        name,
        gap >= GAP,
        f"source {100 * src:.1f}, target average {100 * targets:.1f}, gap {100 * gap:.1f}",
    )


def _resolving(runs: SeedRuns, source: str | None) -> Check:
    name = "V3 resolving power (target average ± ≤ 1.0 per method, full − freeze ± ≤ 0.7)"
    seeds = min((len(r) for r in runs.values()), default=0)
    if seeds < 2:
        return Check(name, None, "needs at least 2 seeds (the criterion is stated for 3)")
    intervals = seed_intervals(runs, source)
    widths = {m: cols[AVERAGE_HEADER].half_width for m, cols in intervals.items()}
    passed = all(w <= TARGET_HALF_WIDTH for w in widths.values())
    text = "half-widths " + ", ".join(f"{m} {100 * w:.2f}" for m, w in widths.items())
    if "full" in runs and "freeze" in runs:
        paired = paired_intervals(runs, "freeze", source)["full"][AVERAGE_HEADER]
        passed = passed and paired.half_width <= PAIRED_HALF_WIDTH
        text += f"; full − freeze {paired.format()}"
    else:
        text += "; full − freeze not measured (needs both)"
        passed = False
    return Check(name, passed, f"{text} ({seeds} seeds)")


def _measures(runs: SeedRuns, source: str | None) -> dict[str, str]:
    measures = {}
    intervals = seed_intervals(runs, source) if runs else {}
    averages = {m: cols[AVERAGE_HEADER].mean for m, cols in intervals.items()}
    if "full" in runs and "freeze" in runs and source is not None:
        shares = {
            m: averages[m] / intervals[m][source].mean
            if intervals[m][source].mean > 0
            else math.nan
            for m in ("full", "freeze")
        }
        smaller = "yes" if shares["full"] < shares["freeze"] else "no"
        measures["full keeps a smaller share of its source mIoU on the targets than freeze"] = (
            f"{smaller}: full {100 * shares['full']:.1f}%, freeze {100 * shares['freeze']:.1f}%"
        )
    common = [m for m in PAPER_TABLE1_DINOV2_L if m in runs]
    label = "Spearman ρ of the baselines' target averages with the paper's Table 1 (DINOv2-L)"
    if len(common) >= 3:
        ours = [averages[m] for m in common]
        rho = float(spearmanr(ours, [PAPER_TABLE1_DINOV2_L[m] for m in common]).statistic)
        measures[label] = f"{rho:.2f} over {', '.join(common)}"
    else:
        measures[label] = f"not measured: needs 3 of {', '.join(PAPER_TABLE1_DINOV2_L)}"
    return measures


def check_validity(runs: Mapping[str, Sequence[DomainResults]], source: str | None) -> Validity:
    """V1–V3 and the reported measures for a comparison's runs (per method, one result per
    seed, the same seeds for every method); FisherTune's runs play no part."""
    runs = {m: r for m, r in runs.items() if m != "fishertune"}
    return Validity(
        [_learned(runs, source), _gap(runs, source), _resolving(runs, source)],
        _measures(runs, source),
    )
