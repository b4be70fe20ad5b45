"""``study.md`` and the README's study blocks, rendered from a ``study.json`` record alone.

The record (written by :func:`~fishertune.workflows.study.run_study`) holds, per part, each
arm's mean ± 95% interval per column, the paired differences and the claims with their
verdicts; this module only formats them: :func:`part_block` (a part's claims and tables),
:func:`verdict_table`, :func:`render_markdown` (the whole ``study.md``) and
:func:`fill_blocks` (the ``<!-- study:NAME -->`` blocks of a document such as the README).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from fishertune.evaluation.intervals import Interval
from fishertune.reporting.interval_table import interval_markdown

__all__ = [
    "LOSS_COLUMN",
    "MARKER",
    "VERDICTS",
    "arm_table",
    "claim_counts",
    "claim_lines",
    "fill_blocks",
    "pair_table",
    "part_block",
    "quality_table",
    "render_markdown",
    "selection_table",
    "verdict_table",
]

LOSS_COLUMN = "train loss"
"""Column of the final source training loss (mean over the last tenth of the updates)."""


def _cell(column: str, interval: Interval) -> str:
    """mIoU columns in % with two decimals, the training loss as is with three."""
    scale, digits = (1.0, 3) if column == LOSS_COLUMN else (100.0, 2)
    return interval.format(scale=scale, digits=digits)


def _figure_cell(column: str, interval: Interval) -> str:
    return interval.format(scale=1.0, digits=3)


def _intervals(record: Mapping[str, Any]) -> dict[str, Interval]:
    return {column: Interval.from_dict(value) for column, value in record.items()}


def arm_table(part: Mapping[str, Any], seeds: int) -> str:
    """The part's table: per arm, the trainable backbone parameters and mean ± 95% CI of each
    column (mIoU %, the training loss)."""
    arms = part["arms"]
    return interval_markdown(
        {label: _intervals(arm["mean"]) for label, arm in arms.items()},
        f"Arm (mean ± 95% CI, {seeds} seeds)",
        cell=_cell,
        lead=("trainable", {label: f"{arm['trainable']:,}" for label, arm in arms.items()}),
    )


def pair_table(part: Mapping[str, Any]) -> str:
    """The part's paired differences (mIoU points, loss), ``*`` where the interval excludes 0."""
    return interval_markdown(
        {
            f"{pair['arm']} − {pair['reference']}": _intervals(pair["difference"])
            for pair in part["pairs"]
        },
        "Paired difference",
        cell=_cell,
        mark=True,
    )


def _figures_table(part: Mapping[str, Any], field: str, header: str) -> str | None:
    """Per arm with figures under ``field``, each figure's mean ± 95% CI; None when no arm
    has any."""
    arms = {label: arm[field] for label, arm in part["arms"].items() if arm.get(field)}
    if not arms:
        return None
    rows = {label: _intervals(figures) for label, figures in arms.items()}
    return interval_markdown(rows, header, cell=_figure_cell)


def quality_table(part: Mapping[str, Any]) -> str | None:
    """Per arm, its estimate's reliability and agreement figures (mean ± 95% CI), if any."""
    return _figures_table(part, "quality", "Estimate")


def selection_table(part: Mapping[str, Any]) -> str | None:
    """Per arm, where its selection put the budget and how far its weights moved (mean ± 95%
    CI over seeds), if any arm has the diagnostics."""
    return _figures_table(part, "selection", "Selection")


def claim_lines(part: Mapping[str, Any]) -> list[str]:
    """One line per claim: the comparison, its paired difference and its verdict."""
    lines = []
    for claim in part["claims"]:
        difference = Interval.from_dict(claim["difference"])
        value = _cell(claim["column"], difference)
        lines.append(f"- {claim['claim']}: difference {value} → {claim['verdict']}")
    return lines


VERDICTS = ("supported", "contradicted", "not resolved")
"""A claim's verdicts, in the order the tables count them."""


def claim_counts(part: Mapping[str, Any]) -> str:
    """How many of the part's claims each verdict has, e.g. ``1 supported, 1 contradicted, 8
    not resolved`` (verdicts no claim has are left out)."""
    counts = {verdict: 0 for verdict in VERDICTS}
    for claim in part["claims"]:
        counts[claim["verdict"]] += 1
    return ", ".join(f"{n} {verdict}" for verdict, n in counts.items() if n)


def verdict_table(study: Mapping[str, Any]) -> str:
    """One row per part: the paper's experiment, the claim, its verdict and how many of the
    part's paired comparisons each verdict has (the verdict is the part's rule over them)."""
    return "\n".join(
        [
            "| Part | Paper | Claim | Verdict | Comparisons |",
            "| --- | --- | --- | --- | --- |",
            *(
                f"| {name} | {part['paper']} | {part['claim']} | {part['verdict']} | "
                f"{claim_counts(part)} |"
                for name, part in study["parts"].items()
            ),
        ]
    )


def part_block(study: Mapping[str, Any], name: str) -> str:
    """Part ``name``'s claim lines, arm table, paired differences and (if any) its estimates'
    quality, as markdown: the body of its section in ``study.md`` and in the README."""
    part = study["parts"][name]
    out = [
        f"Claim: {part['claim']}. **Verdict: {part['verdict']}.**",
        "",
        *claim_lines(part),
        "",
        arm_table(part, len(study["seeds"])),
        "",
        pair_table(part),
    ]
    quality = quality_table(part)
    if quality is not None:
        out += [
            "",
            "Estimates' reliability and agreement (Spearman ρ, top-k overlap):",
            "",
            quality,
        ]
    selection = selection_table(part)
    if selection is not None:
        out += [
            "",
            "Where the selection put the budget (Gini over tensors; shares of the selected "
            "elements) and how far the backbone moved (‖θ_end − θ_pre‖ / ‖θ_pre‖, mean over "
            "blocks):",
            "",
            selection,
        ]
    return "\n".join(out)


MARKER = re.compile(r"(<!-- study:([a-z0-9_]+) -->\n)(?:.*?\n)?(<!-- /study:\2 -->)", re.DOTALL)
"""A block of a document filled from a study: ``<!-- study:NAME -->`` … ``<!-- /study:NAME -->``
with NAME ``verdicts`` (:func:`verdict_table`) or a part's name (:func:`part_block`)."""


def fill_blocks(text: str, study: Mapping[str, Any], *more: Mapping[str, Any]) -> str:
    """``text`` (e.g. the README) with every study block refilled: ``verdicts`` from
    ``study``, a part's block from the first of ``study``, ``*more`` that has the part (e.g.
    a part run later into its own folder); an unknown block name raises ValueError naming
    it."""

    def fill(match: re.Match[str]) -> str:
        name = match.group(2)
        owner = next((s for s in (study, *more) if name in s["parts"]), None)
        if name == "verdicts":
            body = verdict_table(study)
        elif owner is not None:
            body = part_block(owner, name)
        else:
            raise ValueError(f"study block {name!r}: not 'verdicts' nor a part of these studies")
        return match.group(1) + body + "\n" + match.group(3)

    return MARKER.sub(fill, text)


def render_markdown(study: Mapping[str, Any], figures: Mapping[str, str] | None = None) -> str:
    """``study.md`` from the ``study.json`` record (``figures``: per part, its image path)."""
    out = [
        "# FisherTune study on the embedded benchmark",
        "",
        f"Seeds {', '.join(map(str, study['seeds']))}; every arm with the same settings "
        "(`configs/demo.yaml` less the method, evaluated once at the end). mIoU in %, mean "
        "± 95% Student-t half-width over seeds; paired differences per seed (* the interval "
        "excludes 0); train loss: the mean source training loss over the last tenth of the "
        "updates. Verdicts come from the intervals: supported / contradicted when the "
        "claim's interval excludes 0 in / against the paper's direction, not resolved "
        "otherwise.",
        "",
        verdict_table(study),
    ]
    for name, part in study["parts"].items():
        out += ["", f"## {name}: {part['paper']}", "", part_block(study, name)]
        for figure in (name, f"{name}_diagnostics"):
            if figures and figure in figures:
                out += ["", f"![{figure}]({figures[figure]})"]
    if study.get("sensitivity") and figures and "sensitivity" in figures:
        out += [
            "",
            "## Fig. 6: sensitivity per block of F, ΔF and DRF",
            "",
            f"From the `scores` part's estimates at seed {study['sensitivity']['seed']}.",
            "",
            f"![sensitivity]({figures['sensitivity']})",
        ]
    return "\n".join(out) + "\n"
