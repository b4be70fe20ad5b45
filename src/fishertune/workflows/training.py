"""One training run with its report, and the sensitivity map of one configuration.

:func:`train_and_report` runs one configuration and writes ``report.md`` beside its
checkpoints: the configuration, the per-domain table, the training curves, the Fig. 6-style
sensitivity heatmap (methods that estimate one), a qualitative grid of one validation image
per domain and the tuner's selection diagnostics (where a sparse method's budget went, how far
each block's weights moved; :mod:`fishertune.reporting.selection_report`).
:func:`method_config` gives a configuration for another method, folder and seed (what
:mod:`~fishertune.workflows.comparison` and the study run). :func:`sensitivity_map` runs only
the warm-up and estimation stages and draws the heatmap.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from torch import Tensor

from fishertune.engine.config import RunConfig, config_from_dict
from fishertune.engine.estimate_file import read_estimate
from fishertune.engine.trainer import Trainer, TrainResult
from fishertune.evaluation.domains import SOURCE_DOMAIN, DomainResults
from fishertune.models import parameter_groups
from fishertune.reporting import (
    qualitative_grid,
    read_metrics_csv,
    selected_share_by_block,
    selection_figure,
    selection_tables,
    sensitivity_by_block,
    sensitivity_heatmap,
    training_curves,
    write_report,
)
from fishertune.sensitivity import EstimateQuality
from fishertune.workflows.prediction import predict_ids

__all__ = [
    "FIGURES",
    "method_config",
    "report_run",
    "saved_sensitivity",
    "sensitivity_map",
    "source_name",
    "train_and_report",
]

FIGURES = "figures"
"""A run's (or a comparison's) folder of figures."""


def source_name(results: DomainResults | None) -> str | None:
    return SOURCE_DOMAIN if results is not None and SOURCE_DOMAIN in results.domains else None


def _qualitative_rows(
    trainer: Trainer,
) -> list[tuple[str, NDArray[np.uint8], NDArray[np.int64], NDArray[np.int64]]]:
    """The first image of each evaluated domain with its label and prediction."""
    rows = []
    for name, dataset in trainer.eval_sets.items():
        image, label = dataset[0]
        normalised, _ = trainer.eval_transform(image, label)
        amp = trainer.config.schedule.amp
        prediction = predict_ids(trainer.segmentor, normalised, trainer.protocol, amp=amp)
        picture = image.permute(1, 2, 0).numpy().astype(np.uint8)
        rows.append((name, picture, label.numpy().astype(np.int64), prediction.astype(np.int64)))
    return rows


def saved_sensitivity(trainer: Trainer) -> NDArray[np.float64] | None:
    """The Fig. 6 table (mean score per block and Q / K / V / FFN) of the scores the run's
    estimation stage saved; None when it has none."""
    saved = read_estimate(trainer.checkpoint_dir)
    if saved is None:
        return None
    return sensitivity_by_block(saved.scores, parameter_groups(trainer.segmentor.backbone))


def _sensitivity_figure(trainer: Trainer, path: Path) -> Path | None:
    """The heatmap of the saved scores (with the final selection's share), if any."""
    table = saved_sensitivity(trainer)
    if table is None:
        return None
    groups = parameter_groups(trainer.segmentor.backbone)
    share = None
    selection = trainer.tuner.selected()
    if selection is not None and selection.count:
        share = selected_share_by_block(selection.as_masks(), groups)
    title = f"{trainer.config.method.name}: mean sensitivity per block"
    return sensitivity_heatmap(table, path, title=title, selected_share=share)


def _notes(result: TrainResult) -> list[str]:
    notes = [
        f"Trainable parameters: backbone {result.trainable.backbone:,}, decoder "
        f"{result.trainable.decoder:,}.",
        "Time per stage: "
        + ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in result.stage_seconds.items())
        + ".",
    ]
    if result.best is not None:
        notes.append(
            f"Best source-validation mIoU {100 * result.best['source_miou']:.2f} at step "
            f"{result.best['step']} (checkpoints/best); the targets never select a checkpoint."
        )
    return notes


def _quality_notes(trainer: Trainer) -> list[str]:
    """What the estimation stage measured of its own scores (method.md §6), warnings first."""
    quality = trainer.tuner.quality
    if quality is None:
        return []
    lines = [f"**Warning**: {line}." for line in quality.warnings()]
    prefix = f"Sensitivity estimate ({quality.estimator})"
    return lines + [f"{prefix}: {line}." for line in quality.describe()]


def report_run(trainer: Trainer, result: TrainResult) -> Path:
    """Draw the run's figures and write its ``report.md``; returns its path."""
    run_dir = result.run_dir
    figures: dict[str, Path] = {}
    rows = read_metrics_csv(run_dir / "metrics.csv")
    if rows:
        figures["Training curves"] = training_curves(rows, run_dir / FIGURES / "curves.png")
    heatmap = _sensitivity_figure(trainer, run_dir / FIGURES / "sensitivity.png")
    if heatmap is not None:
        figures["Sensitivity per block (paper Fig. 6)"] = heatmap
    if trainer.eval_sets:
        figures["Image / ground truth / prediction per domain"] = qualitative_grid(
            _qualitative_rows(trainer), run_dir / FIGURES / "qualitative.png"
        )
    tables: dict[str, str] = {}
    if trainer.diagnostics is not None:
        tables = selection_tables(trainer.diagnostics)
        picture = selection_figure(trainer.diagnostics, run_dir / FIGURES / "selection.png")
        if picture is not None:
            figures["Selected budget and weight change per block"] = picture
    config = trainer.config
    return write_report(
        run_dir,
        title=f"{config.method.name} on {config.data.source}",
        config=config.to_dict(),
        results=result.results,
        source_domain=source_name(result.results),
        figures=figures,
        notes=_notes(result) + _quality_notes(trainer),
        extra_tables=tables,
    )


def train_and_report(
    config: RunConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    device: str | None = None,
    report: bool = True,
) -> tuple[Trainer, TrainResult, Path | None]:
    """Train ``config`` (continuing its run with ``resume``) and, with ``report``, write its
    report (rank 0); returns the trainer, its result and the report's path (None when none
    was written)."""
    trainer = Trainer(config, progress=progress, device=device)
    result = trainer.run(resume=resume)
    path = report_run(trainer, result) if report and trainer.is_main else None
    return trainer, result, path


def method_config(
    config: RunConfig,
    method: str,
    run_dir: Path,
    seed: int | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> RunConfig:
    """``config`` for ``method`` in ``run_dir``: the configured options when ``method`` is the
    configured one, the method's defaults otherwise, with ``overrides`` on top; ``seed``
    replaces ``schedule.seed``."""
    data = config.to_dict()
    options = data["method"]["options"] if method == config.method.name else {}
    data["method"] = {"name": method, "options": {**options, **(overrides or {})}}
    data["output"] = {"run_dir": str(run_dir)}
    if seed is not None:
        data["schedule"]["seed"] = seed
    return config_from_dict(data)


def sensitivity_map(
    config: RunConfig, *, progress: bool = True, device: str | None = None
) -> tuple[dict[str, Tensor], Path | None, EstimateQuality | None]:
    """Warm up, estimate the method's sensitivity (DR-FIM for FisherTune), save it and draw
    the heatmap at ``run_dir/figures/sensitivity.png`` (rank 0); returns the scores, the
    figure and the estimate's quality."""
    trainer = Trainer(config, progress=progress, device=device)
    scores = trainer.estimate_sensitivity()
    quality = trainer.tuner.quality
    if not trainer.is_main:
        return scores, None, quality
    figure = _sensitivity_figure(trainer, trainer.run_dir / FIGURES / "sensitivity.png")
    return scores, figure, quality
