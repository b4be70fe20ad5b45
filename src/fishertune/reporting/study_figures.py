"""Figures of ``fishertune study``: curves with error bars and Fig. 6 side by side.

:func:`interval_curves` draws the budget curve (Appendix C) and the capacity curves (Rein's
Fig. 5: training loss and target mIoU as the trainable parameters grow), each point a mean over
seeds with its 95% half-width; :func:`sensitivity_panels` draws the paper's Fig. 6 (F, ΔF and
DRF per block and kind) side by side, each on its own colour scale; :func:`selection_curves`
draws, per arm, where its selection put the budget and how far each block's weights moved. Bars
use :func:`~fishertune.reporting.plots.domain_bars`; :func:`draw_figures` draws every figure of
a ``study.json`` record from the record alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from numpy.typing import NDArray

from fishertune.evaluation.domains import AVERAGE_HEADER
from fishertune.evaluation.intervals import Interval, number
from fishertune.reporting.plots import (
    DEFAULT_KINDS,
    domain_bars,
    grey_nan_colormap,
    heat_panel,
    log10_positive,
    method_colors,
    save_figure,
)
from fishertune.reporting.study_report import LOSS_COLUMN

__all__ = [
    "CurvePanel",
    "draw_figures",
    "interval_curves",
    "selection_curves",
    "sensitivity_panels",
]


@dataclass(frozen=True)
class CurvePanel:
    """One panel: a curve of means with error bars over ``ticks`` (one point each).

    Attributes:
        ticks: the x labels, in curve order.
        means: the y values (NaN: no point).
        errors: the half-widths (NaN: no bar).
        ylabel: the y axis label.
        xlabel: the x axis label.
    """

    ticks: tuple[str, ...]
    means: tuple[float, ...]
    errors: tuple[float, ...]
    ylabel: str
    xlabel: str

    def __post_init__(self) -> None:
        if not len(self.ticks) == len(self.means) == len(self.errors) > 0:
            raise ValueError(
                f"a curve panel needs as many ticks, means and errors (≥ 1), got "
                f"{len(self.ticks)}, {len(self.means)}, {len(self.errors)}"
            )


def interval_curves(panels: Sequence[CurvePanel], path: str | Path, *, title: str) -> Path:
    """Panels side by side, each a line through its means with 95% error bars."""
    if not panels:
        raise ValueError("interval_curves needs at least one panel")
    figure = Figure(figsize=(4.2 * len(panels), 3.4), layout="constrained")
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels, strict=True):
        xs = np.arange(len(panel.ticks), dtype=np.float64)
        errors = [0.0 if math.isnan(e) else e for e in panel.errors]
        ax.errorbar(xs, panel.means, yerr=errors, marker="o", capsize=3)
        for x, mean in zip(xs, panel.means, strict=True):
            if not math.isnan(mean):
                ax.annotate(
                    f"{mean:.2f}", (x, mean), textcoords="offset points", xytext=(4, 4), fontsize=7
                )
        ax.set_xticks(xs, labels=list(panel.ticks), fontsize=7)
        ax.set_xlabel(panel.xlabel)
        ax.set_ylabel(panel.ylabel)
        ax.grid(alpha=0.3)
        ax.margins(x=0.1, y=0.15)
    figure.suptitle(title)
    return save_figure(figure, path)


def sensitivity_panels(
    tables: Mapping[str, NDArray[np.float64]],
    path: str | Path,
    *,
    kinds: Sequence[str] = DEFAULT_KINDS,
    title: str = "Mean sensitivity per block (log10)",
) -> Path:
    """Fig. 6: one block × kind heatmap per score (e.g. F, ΔF, DRF), log10 of the means.

    Each panel has its own colour scale (the scores differ by orders of magnitude); blank
    (grey) cells have no positive mean.
    """
    if not tables:
        raise ValueError("sensitivity_panels needs at least one table")
    shapes = {np.shape(t) for t in tables.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"the tables must share one (blocks, kinds) shape, got {sorted(shapes)}")
    figure = Figure(figsize=(3.0 * len(tables) + 0.8, 4.0), layout="constrained")
    axes = figure.subplots(1, len(tables), squeeze=False)[0]
    for ax, (name, table) in zip(axes, tables.items(), strict=True):
        values = np.asarray(table, dtype=np.float64)
        if values.shape[1] != len(kinds):
            raise ValueError(f"table {name!r} has {values.shape[1]} columns for kinds {kinds}")
        heat_panel(
            figure,
            ax,
            log10_positive(values),
            kinds,
            title=name,
            label="log10 mean",
            cmap=grey_nan_colormap("viridis"),
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


def draw_figures(study: Mapping[str, Any], folder: Path) -> dict[str, str]:
    """Each part's figure and Fig. 6 under ``folder``, drawn from the ``study.json`` record
    alone; returns their paths relative to the folder's parent."""
    paths: dict[str, str] = {}
    for name, part in study["parts"].items():
        arms = part["arms"]
        means = {
            label: {c: Interval.from_dict(v) for c, v in arm["mean"].items()}
            for label, arm in arms.items()
        }
        path = folder / f"{name}.png"
        title = f"{name} ({part['paper']}): 95% CI over {len(study['seeds'])} seeds"
        if part["figure"] == "domains":
            domains = [c for c in next(iter(means.values())) if c != LOSS_COLUMN]
            domain_bars(
                {label: {c: m[c].mean for c in domains} for label, m in means.items()},
                path,
                title=title,
                errors={label: {c: m[c].half_width for c in domains} for label, m in means.items()},
            )
        elif part["figure"] == "grouped":
            series: dict[str, dict[str, float]] = {}
            errors: dict[str, dict[str, float]] = {}
            for group, members in part["groups"]:
                for name_, label in members:
                    series.setdefault(name_, {})[group] = means[label][AVERAGE_HEADER].mean
                    errors.setdefault(name_, {})[group] = means[label][AVERAGE_HEADER].half_width
            domain_bars(series, path, title=f"{title}; target average", errors=errors)
        elif part["figure"] in ("budget", "capacity"):
            order = list(arms)
            if part["figure"] == "capacity":
                order.sort(key=lambda label: arms[label]["trainable"])
            ticks = tuple(
                label if part["figure"] == "budget" else f"{label}\n{arms[label]['trainable']:,}"
                for label in order
            )
            xlabel = (
                "δ_max (share of backbone parameters)"
                if part["figure"] == "budget"
                else "trainable backbone parameters"
            )
            panels = [
                CurvePanel(
                    ticks,
                    tuple(100 * means[label][AVERAGE_HEADER].mean for label in order),
                    tuple(100 * means[label][AVERAGE_HEADER].half_width for label in order),
                    "target average mIoU (%)",
                    xlabel,
                )
            ]
            if part["figure"] == "capacity":
                panels.insert(
                    0,
                    CurvePanel(
                        ticks,
                        tuple(means[label][LOSS_COLUMN].mean for label in order),
                        tuple(means[label][LOSS_COLUMN].half_width for label in order),
                        "source training loss (last tenth)",
                        xlabel,
                    ),
                )
            interval_curves(panels, path, title=title)
        else:
            domain_bars(
                {"target average": {label: m[AVERAGE_HEADER].mean for label, m in means.items()}},
                path,
                title=title,
                errors={
                    "target average": {
                        label: m[AVERAGE_HEADER].half_width for label, m in means.items()
                    }
                },
            )
        paths[name] = f"{folder.name}/{path.name}"
        diagnostics = {
            label: arm["diagnostics"] for label, arm in arms.items() if arm.get("diagnostics")
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
            label: np.array([[number(v) for v in row] for row in table], dtype=np.float64)
            for label, table in sensitivity["tables"].items()
        }
        sensitivity_panels(
            tables,
            folder / "fig6_sensitivity.png",
            title=f"Mean sensitivity per block (log10), seed {sensitivity['seed']}",
        )
        paths["sensitivity"] = f"{folder.name}/fig6_sensitivity.png"
    return paths
