"""Figures of ``fishertune study``, drawn from a ``study.json`` record alone.

:func:`part_figure` draws one part: each arm's target average with its 95% interval (the axis
spans the values, FisherTune marked) or, for ``capacity``, the arms against their trainable
parameters on a symmetric-log axis, beside a forest plot of the part's paired differences with
a zero line, the differences that decide a claim coloured by their verdict (the figure shows
what the verdict table says). :func:`sensitivity_panels` draws the paper's Fig. 6 (F, ΔF and
DRF per block and kind) on one shared colour scale; :func:`selection_curves` draws, per arm,
where its selection put the budget and how far each block's weights moved;
:func:`draw_figures` draws them all.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from numpy.typing import NDArray

from fishertune.evaluation.domains import AVERAGE_HEADER
from fishertune.evaluation.intervals import Interval, number
from fishertune.reporting.plots import (
    DEFAULT_KINDS,
    grey_nan_colormap,
    heat_panel,
    log10_positive,
    method_colors,
    save_figure,
)
from fishertune.reporting.study_report import LOSS_COLUMN, claim_counts

__all__ = [
    "arm_panel",
    "capacity_panels",
    "draw_figures",
    "forest_panel",
    "part_figure",
    "selection_curves",
    "sensitivity_panels",
]


def sensitivity_panels(
    tables: Mapping[str, NDArray[np.float64]],
    path: str | Path,
    *,
    kinds: Sequence[str] = DEFAULT_KINDS,
    title: str = "Mean sensitivity per block (log10)",
) -> Path:
    """Fig. 6: one block × kind heatmap per score (e.g. F, ΔF, DRF), log10 of the means.

    All panels share one colour scale, so that scores orders of magnitude apart look it, and
    each panel's title says its median's ratio to the first panel's; blank (grey) cells have no
    positive mean.
    """
    if not tables:
        raise ValueError("sensitivity_panels needs at least one table")
    shapes = {np.shape(t) for t in tables.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"the tables must share one (blocks, kinds) shape, got {sorted(shapes)}")
    figure = Figure(figsize=(3.4 * len(tables) + 0.8, 4.4), layout="constrained")
    axes = figure.subplots(1, len(tables), squeeze=False)[0]
    logs = {
        name: log10_positive(np.asarray(table, dtype=np.float64)) for name, table in tables.items()
    }
    finite = np.concatenate([v[np.isfinite(v)] for v in logs.values()])
    limits = (float(finite.min()), float(finite.max())) if finite.size else None
    first = float(np.nanmedian(next(iter(logs.values()))))
    for ax, (name, values) in zip(axes, logs.items(), strict=True):
        if values.shape[1] != len(kinds):
            raise ValueError(f"table {name!r} has {values.shape[1]} columns for kinds {kinds}")
        ratio = 10 ** (float(np.nanmedian(values)) - first)
        heat_panel(
            figure,
            ax,
            values,
            kinds,
            title=f"{name}\nmedian {ratio:.1e} × the first's",
            label="log10 mean",
            cmap=grey_nan_colormap("viridis"),
            limits=limits,
        )
    figure.suptitle(title)
    return save_figure(figure, path)


def _block_tick(block: int | None) -> str:
    return "rest" if block is None else str(block)


def selection_curves(
    diagnostics: Mapping[str, Mapping[str, object]], path: str | Path, *, title: str
) -> Path:
    """Per arm (its run's ``TuningDiagnostics.to_dict()``), the share of the selected budget per
    block with the Gini coefficient in the legend (arms with a selection) and the relative
    weight change ‖θ_end − θ_pre‖ / ‖θ_pre‖ per block (log scale; arms that change the
    backbone's weights)."""
    figure = Figure(figsize=(11.0, 4.2), layout="constrained")
    share_ax, change_ax = figure.subplots(1, 2)
    colours = method_colors(len(diagnostics))
    for index, (label, record) in enumerate(diagnostics.items()):
        style = {"marker": "o", "color": colours[index], "label": label}
        selection = record.get("selection")
        if isinstance(selection, Mapping):
            rows = selection["share_by_block"]
            gini = selection["gini"]
            share_ax.plot(
                [_block_tick(r["block"]) for r in rows],
                [100 * (r["share"] or 0.0) for r in rows],
                **{**style, "label": f"{label} (Gini {gini:.2f})" if gini is not None else label},
            )
        changes = record.get("weight_change")
        if isinstance(changes, Sequence):
            change_ax.plot(
                [_block_tick(c["block"]) for c in changes],
                [100 * c["relative"] if c["relative"] else math.nan for c in changes],
                **style,
            )
    share_ax.set_xlabel("block")
    share_ax.set_ylabel("share of the selected budget (%)")
    share_ax.legend(fontsize=7)
    change_ax.set_xlabel("block")
    change_ax.set_ylabel("‖θ_end − θ_pre‖ / ‖θ_pre‖ (%)")
    change_ax.set_yscale("log")
    change_ax.legend(fontsize=7)
    for ax in (share_ax, change_ax):
        ax.grid(alpha=0.3)
    figure.suptitle(title, fontsize=10)
    return save_figure(figure, path)


VERDICT_COLOURS = {
    "supported": "tab:green",
    "contradicted": "tab:red",
    "not resolved": "tab:gray",
}
"""The colour of a paired difference that decides a claim, by its verdict (others: black)."""
HIGHLIGHT = "FisherTune"
"""Arms whose label starts with this are marked in the per-arm panels."""


HIGHLIGHT_COLOUR, ARM_COLOUR = "tab:red", "tab:blue"


def _is_highlighted(label: str) -> bool:
    return label.startswith(HIGHLIGHT)


def _arm_colour(label: str) -> str:
    return HIGHLIGHT_COLOUR if _is_highlighted(label) else ARM_COLOUR


def arm_panel(ax: Axes, means: Mapping[str, Interval], *, xlabel: str) -> None:
    """Each arm's mean with its 95% interval as a dot and a bar, one row per arm in record
    order; the axis spans the values, not 0, and FisherTune's arms are marked."""
    labels = list(means)
    ys = np.arange(len(labels), dtype=np.float64)[::-1]
    for y, label in zip(ys, labels, strict=True):
        interval = means[label]
        ax.errorbar(
            100 * interval.mean,
            y,
            xerr=0.0 if math.isnan(interval.half_width) else 100 * interval.half_width,
            fmt="o",
            color=_arm_colour(label),
            capsize=3,
        )
    ax.set_yticks(ys, labels=labels, fontsize=8)
    for tick, label in zip(ax.get_yticklabels(), labels, strict=True):
        if _is_highlighted(label):
            tick.set_fontweight("bold")
            tick.set_color(HIGHLIGHT_COLOUR)
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)
    ax.margins(y=0.05)


def forest_panel(ax: Axes, part: Mapping[str, Any], column: str) -> None:
    """The part's paired differences in ``column`` (points) with their 95% intervals and a zero
    line: the numbers the verdicts come from. A difference that decides a claim is coloured by
    its verdict; the others are black."""
    verdicts = {
        round(Interval.from_dict(c["difference"]).mean, 12): c["verdict"]
        for c in part["claims"]
        if c["column"] == column
    }
    rows = [
        (f"{pair['arm']} − {pair['reference']}", pair["difference"][column])
        for pair in part["pairs"]
    ]
    ys = np.arange(len(rows), dtype=np.float64)[::-1]
    for y, (_, value) in zip(ys, rows, strict=True):
        interval = Interval.from_dict(value)
        verdict = verdicts.get(round(interval.mean, 12))
        ax.errorbar(
            100 * interval.mean,
            y,
            xerr=0.0 if math.isnan(interval.half_width) else 100 * interval.half_width,
            fmt="s" if verdict else "o",
            color=VERDICT_COLOURS.get(verdict or "", "black"),
            capsize=3,
        )
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_yticks(ys, labels=[label for label, _ in rows], fontsize=8)
    ax.set_xlabel(f"paired difference, {column} (mIoU points)")
    ax.grid(axis="x", alpha=0.3)
    ax.margins(y=0.05)
    handles = [
        Line2D([], [], marker="s", linestyle="", color=colour, label=f"claim: {verdict}")
        for verdict, colour in VERDICT_COLOURS.items()
        if verdict in verdicts.values()
    ]
    if handles:
        ax.legend(handles=handles, fontsize=7, loc="best")


def capacity_panels(axes: Sequence[Axes], part: Mapping[str, Any]) -> None:
    """Trainable backbone parameters (symmetric-log x: 0 for a frozen backbone) against the
    target average and against the source training loss, one point per arm with its 95%
    interval; no line joins different methods."""
    arms = part["arms"]
    for ax, column, ylabel, scale in (
        (axes[0], AVERAGE_HEADER, "target average mIoU (%)", 100.0),
        (axes[1], LOSS_COLUMN, "source training loss (last tenth)", 1.0),
    ):
        for label, arm in arms.items():
            interval = Interval.from_dict(arm["mean"][column])
            ax.errorbar(
                float(arm["trainable"]),
                scale * interval.mean,
                yerr=scale * interval.half_width,
                fmt="o",
                color=_arm_colour(label),
                capsize=3,
            )
            ax.annotate(
                label,
                (float(arm["trainable"]), scale * interval.mean),
                fontsize=7,
                textcoords="offset points",
                xytext=(4, 4),
            )
        ax.set_xscale("symlog", linthresh=1e4)
        ax.set_xlabel("trainable backbone parameters (symlog)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)


def part_figure(study: Mapping[str, Any], name: str, path: Path) -> Path:
    """One part's figure: per arm (or, for ``capacity``, against the trainable parameters) and
    the paired differences its verdicts come from."""
    part = study["parts"][name]
    seeds = len(study["seeds"])
    means = {
        label: Interval.from_dict(arm["mean"][AVERAGE_HEADER])
        for label, arm in part["arms"].items()
    }
    capacity = part["figure"] == "capacity"
    rows = max(len(means), len(part["pairs"]))
    columns = 3 if capacity else 2
    figure = Figure(figsize=(5.2 * columns, 1.2 + 0.32 * rows), layout="constrained")
    axes = figure.subplots(1, columns, squeeze=False)[0]
    if capacity:
        capacity_panels(axes[:2], part)
    else:
        arm_panel(axes[0], means, xlabel=f"target average mIoU (%), mean ± 95% CI, {seeds} seeds")
    forest_panel(axes[-1], part, AVERAGE_HEADER)
    figure.suptitle(
        f"{name} ({part['paper']}): {part['claim']}: {part['verdict']}\n"
        f"({claim_counts(part)}; {seeds} seeds)",
        fontsize=9,
    )
    return save_figure(figure, path)


FIG6_LABELS = {
    "F": "F̂ (stable Fisher, γΛ − floor)",
    "ΔF": "γ·ΔF̃ (Eq. 15's domain term)",
    "DRF": "DRF = F̂ + c·γ·ΔF̃ (Eq. 15)",
}
"""What the ``scores`` part's three arms' saved scores are (the study ran Eq. 15 as printed)."""


def draw_figures(study: Mapping[str, Any], folder: Path) -> dict[str, str]:
    """Each part's figure and Fig. 6 under ``folder``, drawn from the ``study.json`` record
    alone; returns their paths relative to the folder's parent."""
    paths: dict[str, str] = {}
    for name, part in study["parts"].items():
        path = folder / f"{name}.png"
        part_figure(study, name, path)
        paths[name] = f"{folder.name}/{path.name}"
        diagnostics = {
            label: arm["diagnostics"]
            for label, arm in part["arms"].items()
            if arm.get("diagnostics")
        }
        if part["figure"] == "bars" and diagnostics:
            selection_curves(
                diagnostics,
                folder / f"{name}_diagnostics.png",
                title=f"{name}: where the budget went and how far the weights moved "
                f"(seed {study['seeds'][0]})",
            )
            paths[f"{name}_diagnostics"] = f"{folder.name}/{name}_diagnostics.png"
    sensitivity = study.get("sensitivity")
    if sensitivity:
        tables = {
            FIG6_LABELS.get(label, label): np.array(
                [[number(v) for v in row] for row in table], dtype=np.float64
            )
            for label, table in sensitivity["tables"].items()
        }
        sensitivity_panels(
            tables,
            folder / "fig6_sensitivity.png",
            title=f"Mean sensitivity per block, log10, one colour scale for all panels "
            f"(seed {sensitivity['seed']})",
        )
        paths["sensitivity"] = f"{folder.name}/fig6_sensitivity.png"
    return paths
