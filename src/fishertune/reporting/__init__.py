"""Reporting, the last layer of a run: figures and the markdown report.

:mod:`~fishertune.reporting.palette` colours Cityscapes label maps;
:mod:`~fishertune.reporting.plots` draws the paper's Fig. 6-style sensitivity heatmap
(:func:`sensitivity_by_block` → :func:`sensitivity_heatmap`), the training curves of a run's
``metrics.csv``, qualitative image / ground truth / prediction grids and per-domain bars;
:mod:`~fishertune.reporting.report` writes ``report.md`` and Table-1-style comparisons;
:mod:`~fishertune.reporting.selection_report` puts a run's selection diagnostics into it.
Plots render with matplotlib's Agg canvas and never touch pyplot's global state.
"""

from fishertune.label_space import CITYSCAPES_PALETTE, IGNORE_COLOR, IGNORE_INDEX
from fishertune.reporting.palette import colorize, legend_handles, overlay, train_ids
from fishertune.reporting.plots import (
    DEFAULT_KINDS,
    domain_bars,
    method_colors,
    moving_average,
    qualitative_grid,
    read_metrics_csv,
    selected_share_by_block,
    sensitivity_by_block,
    sensitivity_heatmap,
    training_curves,
)
from fishertune.reporting.report import (
    comparison_table,
    interval_table,
    paired_intervals,
    paired_table,
    seed_intervals,
    write_report,
)
from fishertune.reporting.selection_report import selection_figure, selection_tables

__all__ = [
    "CITYSCAPES_PALETTE",
    "DEFAULT_KINDS",
    "IGNORE_COLOR",
    "IGNORE_INDEX",
    "colorize",
    "comparison_table",
    "domain_bars",
    "interval_table",
    "legend_handles",
    "method_colors",
    "moving_average",
    "overlay",
    "paired_intervals",
    "paired_table",
    "qualitative_grid",
    "read_metrics_csv",
    "seed_intervals",
    "selected_share_by_block",
    "selection_figure",
    "selection_tables",
    "sensitivity_by_block",
    "sensitivity_heatmap",
    "train_ids",
    "training_curves",
    "write_report",
]
