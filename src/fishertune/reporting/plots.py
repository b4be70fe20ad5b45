"""Figures of a run: sensitivity heatmaps, training curves, qualitative grids, domain bars.

Every plot draws on a :class:`matplotlib.figure.Figure` rendered by the Agg canvas, so nothing
here touches pyplot's global state or the session's backend. Each writes a PNG to ``path``
(creating its parent folders) and returns ``path`` as a :class:`~pathlib.Path`.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Colormap
from matplotlib.figure import Figure
from numpy.typing import NDArray
from torch import Tensor

from fishertune.label_space import CITYSCAPES_CLASSES, IGNORE_INDEX
from fishertune.models.parameter_groups import KINDS, ParameterGroup
from fishertune.reporting.palette import colorize, legend_handles, train_ids

DEFAULT_KINDS: tuple[str, ...] = ("Q", "K", "V", "FFN")
"""Columns of the paper's Fig. 6: Q, K, V and the FFN (FFN1 and FFN2 pooled)."""

_POOLED = {"FFN": ("FFN1", "FFN2")}
_DPI = 120


def _members(kinds: Sequence[str]) -> list[tuple[str, ...]]:
    """The :data:`KINDS` each column pools ("FFN" is FFN1 + FFN2, others are themselves)."""
    columns: list[tuple[str, ...]] = []
    for kind in kinds:
        members = _POOLED.get(kind, (kind,))
        unknown = [m for m in members if m not in KINDS]
        if unknown:
            raise ValueError(f"unknown kind {kind!r}; choose from {(*KINDS, *_POOLED)}")
        columns.append(members)
    return columns


def _per_block(
    tensors: Mapping[str, Tensor],
    groups: Sequence[ParameterGroup],
    kinds: Sequence[str],
    reduce: Callable[[Tensor], tuple[float, int]],
) -> NDArray[np.float64]:
    """``sum / count`` per (block, column) of ``reduce(tensors[g.name][g.index])`` over groups.

    Rows are blocks ``0 .. max block``; groups outside blocks, of other kinds or of tensors
    absent from ``tensors`` are skipped; a cell with count 0 is NaN.
    """
    columns = _members(kinds)
    blocks = [g.block for g in groups if g.block is not None]
    shape = (max(blocks) + 1 if blocks else 0, len(kinds))
    totals = np.zeros(shape, dtype=np.float64)
    counts = np.zeros(shape, dtype=np.int64)
    for g in groups:
        if g.block is None or g.name not in tensors:
            continue
        for col, members in enumerate(columns):
            if g.kind in members:
                total, count = reduce(tensors[g.name][g.index])
                totals[g.block, col] += total
                counts[g.block, col] += count
    return np.where(counts > 0, totals / np.maximum(counts, 1), math.nan)


def _kept_scores(values: Tensor) -> tuple[float, int]:
    values = values.detach().to(torch.float64)
    kept = values[~(torch.isnan(values) | (values == -math.inf))]
    return float(kept.sum()), kept.numel()


def _selected(values: Tensor) -> tuple[float, int]:
    if values.dtype != torch.bool:
        raise TypeError(f"masks must be boolean tensors, got {values.dtype}")
    return float(values.sum()), values.numel()


def sensitivity_by_block(
    scores: Mapping[str, Tensor],
    groups: Sequence[ParameterGroup],
    kinds: Sequence[str] = DEFAULT_KINDS,
) -> NDArray[np.float64]:
    """Mean score of the elements of each (block, kind): shape ``(num_blocks, len(kinds))``.

    ``scores`` maps backbone parameter names to tensors of the parameter's shape;
    ``groups`` comes from :func:`fishertune.models.parameter_groups`. A kind is one of
    :data:`~fishertune.models.KINDS` or ``"FFN"`` (FFN1 and FFN2 pooled). Elements scored
    ``-inf`` (non-candidates) or NaN are left out, as are tensors missing from ``scores``;
    a cell with no element left is NaN. ``num_blocks`` is the largest block index + 1.
    """
    return _per_block(scores, groups, kinds, _kept_scores)


def selected_share_by_block(
    masks: Mapping[str, Tensor],
    groups: Sequence[ParameterGroup],
    kinds: Sequence[str] = DEFAULT_KINDS,
) -> NDArray[np.float64]:
    """Fraction of selected (True) elements of each (block, kind), laid out as
    :func:`sensitivity_by_block`; tensors missing from ``masks`` are not counted."""
    return _per_block(masks, groups, kinds, _selected)


def save_figure(figure: Figure, path: str | Path) -> Path:
    """Render ``figure`` with the Agg canvas (never pyplot) to the PNG ``path``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)  # attaches itself to the figure
    figure.savefig(target, format="png", dpi=_DPI)
    return target


def grey_nan_colormap(name: str) -> Colormap:
    """A copy of the registered colormap ``name`` that paints NaN (masked) cells grey."""
    return matplotlib.colormaps[name].with_extremes(bad="lightgrey")


def log10_positive(values: NDArray[np.float64]) -> NDArray[np.float64]:
    """log10 of ``values`` where positive, NaN (a blank cell) elsewhere."""
    logged: NDArray[np.float64] = np.where(
        values > 0, np.log10(np.where(values > 0, values, 1.0)), math.nan
    )
    return logged


def heat_panel(
    figure: Figure,
    ax: Axes,
    values: NDArray[np.float64],
    kinds: Sequence[str],
    *,
    title: str,
    label: str,
    cmap: Colormap,
    limits: tuple[float, float] | None = None,
) -> None:
    """One block × kind heatmap with block 0 on top, NaN cells grey, and a colourbar."""
    masked = np.ma.masked_invalid(values)
    vmin, vmax = limits if limits is not None else (None, None)
    image = ax.imshow(
        masked,
        cmap=cmap,
        aspect="auto",
        interpolation="nearest",
        origin="upper",
        vmin=vmin,
        vmax=vmax,
    )
    ax.set_xticks(range(len(kinds)), labels=list(kinds))
    step = max(1, math.ceil(values.shape[0] / 24))
    ax.set_yticks(range(0, values.shape[0], step))
    ax.set_ylabel("block")
    ax.set_title(title)
    figure.colorbar(image, ax=ax, label=label)


def sensitivity_heatmap(
    table: NDArray[np.float64],
    path: str | Path,
    *,
    kinds: Sequence[str] = DEFAULT_KINDS,
    title: str = "Mean parameter sensitivity per block",
    log: bool = True,
    selected_share: NDArray[np.float64] | None = None,
) -> Path:
    """Fig. 6-style heatmap of a :func:`sensitivity_by_block` table.

    Rows are blocks (block 0 at the top), columns ``kinds``, colour the mean sensitivity
    (its log10 with ``log``, where non-positive means are blank). NaN cells are grey. With
    ``selected_share`` (a :func:`selected_share_by_block` table of the same shape) a second
    panel shows the selected fraction per cell on a fixed [0, 1] scale.
    """
    values = np.asarray(table, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != len(kinds):
        raise ValueError(f"table must be (blocks, {len(kinds)}), got shape {values.shape}")
    if selected_share is not None and np.shape(selected_share) != values.shape:
        raise ValueError(
            f"selected_share shape {np.shape(selected_share)} differs from table {values.shape}"
        )
    if log:
        values = log10_positive(values)
    panels = 1 if selected_share is None else 2
    height = min(12.0, 1.8 + 0.28 * max(values.shape[0], 1))
    figure = Figure(
        figsize=(3.4 * panels + 0.6 * len(kinds) * panels, height), layout="constrained"
    )
    axes = figure.subplots(1, panels, squeeze=False)[0]
    label = "log10 mean sensitivity" if log else "mean sensitivity"
    heat_panel(
        figure, axes[0], values, kinds, title=title, label=label, cmap=grey_nan_colormap("viridis")
    )
    if selected_share is not None:
        share = np.asarray(selected_share, dtype=np.float64)
        heat_panel(
            figure,
            axes[1],
            share,
            kinds,
            title="Selected share",
            label="fraction selected",
            cmap=grey_nan_colormap("magma"),
            limits=(0.0, 1.0),
        )
    return save_figure(figure, path)


def _parse_cell(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def read_metrics_csv(path: str | Path) -> list[dict[str, float | str]]:
    """The rows of a run's ``metrics.csv``: numeric cells as float, others as stripped text.

    Empty cells are omitted, so an evaluation row only holds ``step`` and its ``miou/<domain>``
    values and a training row only its loss, learning rate, ...
    """
    with Path(path).open(newline="", encoding="utf-8") as handle:
        return [
            {
                key: _parse_cell(text.strip())
                for key, text in row.items()
                if key is not None and isinstance(text, str) and text.strip()
            }
            for row in csv.DictReader(handle)
        ]


def moving_average(values: Sequence[float], window: int) -> NDArray[np.float64]:
    """Trailing mean over the last ``window`` values (fewer at the start), same length."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    data = np.asarray(values, dtype=np.float64)
    sums = np.concatenate([[0.0], np.cumsum(data)])
    end = np.arange(1, data.size + 1)
    start = np.maximum(0, end - window)
    means: NDArray[np.float64] = (sums[end] - sums[start]) / (end - start)
    return means


def _number(value: float | str | None) -> float | None:
    """``value`` as a float when it is (or spells) a number, else None."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _series(
    rows: Sequence[Mapping[str, float | str]], steps: Sequence[float], column: str
) -> tuple[list[float], list[float]]:
    """Steps and finite values of ``column`` over the rows that have it."""
    xs, ys = [], []
    for step, row in zip(steps, rows, strict=True):
        value = _number(row.get(column))
        if value is not None and math.isfinite(value):
            xs.append(step)
            ys.append(value)
    return xs, ys


def training_curves(
    rows: Sequence[Mapping[str, float | str]],
    path: str | Path,
    *,
    window: int | None = None,
) -> Path:
    """Panels of a run's log (:func:`read_metrics_csv` rows) against ``step``.

    Drawn when the log has them: the training ``loss`` (raw and a ``window``-step trailing
    :func:`moving_average`, by default about a twentieth of the points), the learning rate
    ``lr``, the mIoU (%) of every ``miou/<domain>`` column, one line per domain, and the
    ``trainable`` backbone parameter count. Changes of ``stage`` are dotted vertical lines,
    labelled on the first panel. Raises ValueError when a row has no numeric ``step`` or
    nothing can be drawn.
    """
    steps = []
    for i, row in enumerate(rows):
        step = _number(row.get("step"))
        if step is None:
            raise ValueError(f"metrics row {i} has no numeric 'step': {dict(row)}")
        steps.append(step)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    domains = [key for key in columns if key.startswith("miou/")]
    panels: list[Callable[[Axes], None]] = []

    loss_x, loss_y = _series(rows, steps, "loss")
    if loss_y:

        def draw_loss(ax: Axes) -> None:
            width = window if window is not None else max(1, min(200, len(loss_y) // 20))
            ax.plot(loss_x, loss_y, lw=0.7, alpha=0.35, color="tab:blue", label="loss")
            smooth = moving_average(loss_y, width)
            ax.plot(loss_x, smooth, lw=1.6, color="tab:blue", label=f"moving average ({width})")
            ax.set_ylabel("training loss")
            ax.legend(loc="upper right", fontsize=7)

        panels.append(draw_loss)

    lr_x, lr_y = _series(rows, steps, "lr")
    if lr_y:

        def draw_lr(ax: Axes) -> None:
            ax.plot(lr_x, lr_y, lw=1.2, color="tab:orange")
            ax.set_ylabel("learning rate")
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))

        panels.append(draw_lr)

    miou = {key.removeprefix("miou/"): _series(rows, steps, key) for key in domains}
    if any(ys for _, ys in miou.values()):

        def draw_miou(ax: Axes) -> None:
            for domain, (xs, ys) in miou.items():
                if ys:
                    ax.plot(xs, [100 * y for y in ys], marker="o", ms=3, lw=1.2, label=domain)
            ax.set_ylabel("mIoU (%)")
            ax.legend(loc="lower right", fontsize=7, ncol=2)

        panels.append(draw_miou)

    trainable_x, trainable_y = _series(rows, steps, "trainable")
    if trainable_y:

        def draw_trainable(ax: Axes) -> None:
            ax.plot(trainable_x, trainable_y, drawstyle="steps-post", lw=1.2, color="tab:green")
            ax.set_ylabel("trainable params")
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))

        panels.append(draw_trainable)

    if not panels:
        raise ValueError("nothing to plot: no loss, lr, miou/<domain> or trainable values")
    changes: list[tuple[float, str]] = []
    for step, row in zip(steps, rows, strict=True):
        stage = row.get("stage")
        if stage is not None and (not changes or changes[-1][1] != str(stage)):
            changes.append((step, str(stage)))

    figure = Figure(figsize=(7.5, 0.6 + 2.2 * len(panels)), layout="constrained")
    axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, draw in zip(axes, panels, strict=True):
        draw(ax)
        ax.grid(alpha=0.3)
        for step, _ in changes[1:]:
            ax.axvline(step, color="grey", ls=":", lw=1)
    for step, stage in changes:
        axes[0].text(
            step, 1.0, f" {stage}", transform=axes[0].get_xaxis_transform(), fontsize=7, va="bottom"
        )
    axes[-1].set_xlabel("step")
    return save_figure(figure, path)


def qualitative_grid(
    rows: Sequence[
        tuple[str, NDArray[np.uint8], NDArray[np.integer] | Tensor, NDArray[np.integer] | Tensor]
    ],
    path: str | Path,
    *,
    class_names: Sequence[str] = CITYSCAPES_CLASSES,
) -> Path:
    """A grid of (domain, RGB image, ground truth, prediction) rows, one per domain.

    Columns are the uint8 ``(H, W, 3)`` image and the colourised ``(H, W)`` ground-truth and
    predicted train ids; rows are labelled with the domain names. Below the grid a legend
    shows the colours of the classes (named by ``class_names``) that appear in any label.
    """
    if not rows:
        raise ValueError("qualitative_grid needs at least one row")
    panels: list[tuple[str, NDArray[np.uint8], NDArray[np.uint8], NDArray[np.uint8]]] = []
    present: set[int] = set()
    for domain, image, truth, prediction in rows:
        rgb = np.asarray(image)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(
                f"{domain}: image must be uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}"
            )
        coloured = []
        for what, label in (("ground truth", truth), ("prediction", prediction)):
            ids = train_ids(label)
            colours = colorize(ids)
            if colours.shape != rgb.shape:
                raise ValueError(
                    f"{domain}: {what} shape {colours.shape[:2]} differs from image {rgb.shape[:2]}"
                )
            coloured.append(colours)
            present.update(int(v) for v in np.unique(ids) if v != IGNORE_INDEX)
        panels.append((domain, rgb, coloured[0], coloured[1]))

    height, width = panels[0][1].shape[:2]
    cell = 2.8
    figure = Figure(
        figsize=(3 * cell, len(panels) * cell * height / width + 1.1), layout="constrained"
    )
    axes = figure.subplots(len(panels), 3, squeeze=False)
    for r, (domain, *images) in enumerate(panels):
        for c, picture in enumerate(images):
            ax = axes[r, c]
            ax.imshow(picture, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(domain)
    for c, name in enumerate(("image", "ground truth", "prediction")):
        axes[0, c].set_title(name)
    handles = legend_handles(class_names)
    shown = [h for i, h in enumerate(handles) if i in present] or handles
    figure.legend(
        handles=shown,
        loc="outside lower center",
        ncol=min(len(shown), 7),
        fontsize=7,
        frameon=False,
    )
    return save_figure(figure, path)


def method_colors(count: int) -> list[tuple[float, float, float, float]]:
    """``count`` distinct colours for methods side by side: tab10's up to 10, tab20's up to
    20 (matplotlib's default cycle repeats after 10), then tab20's again."""
    cmap = matplotlib.colormaps["tab10" if count <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(count)]


def domain_bars(
    results: Mapping[str, Mapping[str, float]],
    path: str | Path,
    *,
    title: str = "mIoU per domain",
    errors: Mapping[str, Mapping[str, float]] | None = None,
) -> Path:
    """Grouped bars of mIoU (%): a group per domain, a bar per method.

    ``results[method][domain]`` is a fraction in [0, 1]; domains are ordered as first seen and
    NaN (or missing) values get no bar. Each bar is labelled with its value. ``errors`` (same
    keys, fractions) draws error bars of that half-width, e.g. 95% intervals over seeds.
    """
    domains = list(dict.fromkeys(domain for scores in results.values() for domain in scores))
    if not domains:
        raise ValueError("domain_bars needs at least one method with one domain")
    figure = Figure(
        figsize=(max(5.0, 1.1 * len(domains) * max(1, len(results)) ** 0.5), 3.6),
        layout="constrained",
    )
    ax = figure.subplots()
    width = 0.8 / len(results)
    colors = method_colors(len(results))
    for i, (method, scores) in enumerate(results.items()):
        xs, heights, spreads = [], [], []
        for d, domain in enumerate(domains):
            value = scores.get(domain, math.nan)
            if not math.isnan(value):
                xs.append(d - 0.4 + (i + 0.5) * width)
                heights.append(100 * value)
                spread = (errors or {}).get(method, {}).get(domain, math.nan)
                spreads.append(0.0 if math.isnan(spread) else 100 * spread)
        yerr = spreads if errors is not None else None
        bars = ax.bar(xs, heights, width, label=method, yerr=yerr, capsize=2, color=colors[i])
        ax.bar_label(bars, fmt="%.1f", fontsize=6, padding=1)
    ax.set_xticks(range(len(domains)), labels=domains)
    ax.set_ylabel("mIoU (%)")
    ax.set_title(title)
    ax.margins(y=0.1)
    ax.grid(axis="y", alpha=0.3)
    figure.legend(loc="outside lower center", ncol=min(len(results), 5), fontsize=7, frameon=False)
    return save_figure(figure, path)


def style_figure(
    seeds: Sequence[int], path: str | Path, size: tuple[int, int] = (128, 256)
) -> Path:
    """The embedded benchmark's scenes (one row per scene seed) in every style (one column
    each, titled with the style's name)."""
    from fishertune.data.synthetic import STYLES, render_styles

    if not seeds:
        raise ValueError("style_figure needs at least one scene seed")
    height, width = size
    scale = 1.6 / height
    figure = Figure(
        figsize=(len(STYLES) * width * scale, len(seeds) * height * scale + 0.4),
        layout="constrained",
    )
    axes = figure.subplots(len(seeds), len(STYLES), squeeze=False)
    for row, seed in enumerate(seeds):
        images, _ = render_styles(seed, size)
        for col, style in enumerate(STYLES):
            ax = axes[row][col]
            ax.imshow(images[style], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(style, fontsize=9)
            if col == 0:
                ax.set_ylabel(f"scene {row + 1}", fontsize=8)
    return save_figure(figure, path)
