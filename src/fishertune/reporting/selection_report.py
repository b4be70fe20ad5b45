"""A run's selection diagnostics in its report: tables and one figure (paper Fig. 3 / Fig. 6
read by block and Q / K / V / FFN).

:func:`selection_tables` writes :class:`~fishertune.tuners.selection_diagnostics.TuningDiagnostics`
as markdown sections for :func:`~fishertune.reporting.write_report` ("Selection": the share of
the selected budget per block × kind, the Gini coefficient, the empty candidate tensors;
"Weight change per block"); :func:`selection_figure` draws the same numbers, the budget share per
block stacked by kind beside the relative weight change per block.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from fishertune.reporting.plots import save_figure
from fishertune.reporting.report import percent
from fishertune.tuners.selection_diagnostics import (
    COLUMNS,
    BlockChange,
    SelectionDiagnostics,
    TuningDiagnostics,
)

SELECTION = "Selection"
"""Title of the selection section of ``report.md``."""
WEIGHT_CHANGE = "Weight change per block"
"""Title of the weight-change section of ``report.md``."""


def _block_label(block: int | None) -> str:
    return "outside blocks" if block is None else str(block)


def _share_table(diagnostics: SelectionDiagnostics) -> str:
    kinds = diagnostics.kinds
    lines = [
        "| Block | " + " | ".join(kinds) + " | All |",
        "| --- |" + " ---: |" * (len(kinds) + 1),
    ]
    by_block = diagnostics.share_by_block()
    for block in diagnostics.blocks:
        cells = [
            percent(diagnostics.share(block, kind)) if (block, kind) in diagnostics.counts else "-"
            for kind in kinds
        ]
        lines.append(
            f"| {_block_label(block)} | " + " | ".join(cells) + f" | {percent(by_block[block])} |"
        )
    by_kind = diagnostics.share_by_kind()
    total = percent(math.fsum(by_kind.values()))  # 100 (NaN with nothing selected)
    lines.append("| All | " + " | ".join(percent(by_kind[k]) for k in kinds) + f" | {total} |")
    return "\n".join(lines)


def _selection_section(diagnostics: SelectionDiagnostics) -> str:
    empty = diagnostics.empty
    names = ": " + ", ".join(f"`{name}`" for name in empty) if empty else ""
    gini = "-" if math.isnan(diagnostics.gini) else f"{diagnostics.gini:.3f}"
    return "\n\n".join(
        [
            f"Share of the selected budget (%) per block and kind: {diagnostics.selected:,} of "
            f"{diagnostics.candidates:,} candidate elements selected (FFN = FFN1 + FFN2; a dash "
            "marks a block and kind without candidate elements).",
            _share_table(diagnostics),
            f"Gini coefficient of the selected fraction of each of the {diagnostics.tensors} "
            f"candidate tensors, weighted by their candidate elements: {gini} (0: every tensor "
            "has the same fraction selected).",
            f"Candidate tensors with no selected element: {len(empty)} of "
            f"{diagnostics.tensors}{names}.",
        ]
    )


def _change_section(changes: Sequence[BlockChange]) -> str:
    lines = [
        "Relative change ‖θ_end − θ_pre‖ / ‖θ_pre‖ over all of each block's parameters "
        "(θ_pre: the backbone before tuning; θ_end: its weights at the end of training).",
        "",
        "| Block | ‖θ_end − θ_pre‖ | ‖θ_pre‖ | Relative change (%) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for change in changes:
        relative = "-" if math.isnan(change.relative) else f"{100 * change.relative:.4g}"
        lines.append(
            f"| {_block_label(change.block)} | {change.change:.4g} | {change.pretrained:.4g} "
            f"| {relative} |"
        )
    return "\n".join(lines)


def selection_tables(diagnostics: TuningDiagnostics) -> dict[str, str]:
    """The report sections (title → markdown) of the parts ``diagnostics`` has."""
    tables = {}
    if diagnostics.selection is not None:
        tables[SELECTION] = _selection_section(diagnostics.selection)
    if diagnostics.weight_change is not None:
        tables[WEIGHT_CHANGE] = _change_section(diagnostics.weight_change)
    return tables


def _draw_shares(ax: Axes, diagnostics: SelectionDiagnostics) -> None:
    blocks = diagnostics.blocks
    rows = range(len(blocks))
    left = [0.0] * len(blocks)
    colours = matplotlib.colormaps["tab10"]
    for kind in diagnostics.kinds:
        widths = [
            100 * diagnostics.counts.get((b, kind), 0) / max(diagnostics.selected, 1)
            for b in blocks
        ]
        ax.barh(rows, widths, left=left, color=colours(COLUMNS.index(kind)), label=kind)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.set_yticks(rows, labels=[_block_label(b) for b in blocks])
    ax.invert_yaxis()
    ax.set_xlabel("share of the selected budget (%)")
    ax.set_ylabel("block")
    gini = "-" if math.isnan(diagnostics.gini) else f"{diagnostics.gini:.2f}"
    ax.set_title(f"Selected budget per block (Gini {gini}, {len(diagnostics.empty)} empty tensors)")
    ax.legend(loc="lower right", fontsize=7)


def _draw_change(ax: Axes, changes: Sequence[BlockChange]) -> None:
    rows = range(len(changes))
    ax.barh(rows, [100 * c.relative for c in changes], color="tab:purple")
    ax.set_yticks(rows, labels=[_block_label(c.block) for c in changes])
    ax.invert_yaxis()
    ax.set_xlabel("‖θ_end − θ_pre‖ / ‖θ_pre‖ (%)")
    ax.set_title("Relative weight change per block")


def selection_figure(diagnostics: TuningDiagnostics, path: str | Path) -> Path | None:
    """The budget share per block stacked by kind (left) and the relative weight change per
    block (right), each panel when ``diagnostics`` has its part; None (no file) with neither."""
    panels: list[tuple[Callable[[Axes], None], int]] = []
    selection, changes = diagnostics.selection, diagnostics.weight_change
    if selection is not None:
        panels.append((partial(_draw_shares, diagnostics=selection), len(selection.blocks)))
    if changes is not None:
        panels.append((partial(_draw_change, changes=changes), len(changes)))
    if not panels:
        return None
    rows = max(count for _, count in panels)
    figure = Figure(figsize=(5.0 * len(panels), min(12.0, 1.6 + 0.3 * rows)), layout="constrained")
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, (draw, _) in zip(axes, panels, strict=True):
        draw(ax)
        ax.grid(axis="x", alpha=0.3)
    return save_figure(figure, path)
