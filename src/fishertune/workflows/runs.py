"""Training runs with their reports, method comparisons and sensitivity maps.

:func:`train_and_report` runs one configuration and writes ``report.md`` beside its
checkpoints: the configuration, the per-domain table, the training curves, the Fig. 6-style
sensitivity heatmap (methods that estimate one) and a qualitative grid of one validation image
per domain. :func:`compare` runs several methods on the same configuration, one run directory
each, and writes the Table-1-style comparison with a bar chart. :func:`sensitivity_map` runs
only the warm-up and estimation stages and draws the heatmap.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from torch import Tensor

from fishertune.engine.checkpoint import load_checkpoint
from fishertune.engine.config import RunConfig, config_from_dict
from fishertune.engine.data import SOURCE_DOMAIN
from fishertune.engine.trainer import CHECKPOINTS, SCORE_PREFIX, SENSITIVITY, Trainer, TrainResult
from fishertune.evaluation.domains import DomainResults
from fishertune.models import parameter_groups
from fishertune.reporting import (
    comparison_table,
    domain_bars,
    qualitative_grid,
    read_metrics_csv,
    selected_share_by_block,
    sensitivity_by_block,
    sensitivity_heatmap,
    training_curves,
    write_report,
)
from fishertune.tuners.scoring import ScoredTuner
from fishertune.tuners.sparse import SparseTuner
from fishertune.workflows.inference import predict_ids

__all__ = ["Comparison", "compare", "method_config", "sensitivity_map", "train_and_report"]

FIGURES = "figures"


def _source_name(results: DomainResults | None) -> str | None:
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


def _sensitivity_figure(trainer: Trainer, path: Path) -> Path | None:
    """The heatmap of the saved scores (with the final selection's share), if any."""
    folder = trainer.run_dir / CHECKPOINTS
    if not (folder / f"{SENSITIVITY}.json").is_file():
        return None
    tensors, _ = load_checkpoint(folder, SENSITIVITY)
    scores = {k[len(SCORE_PREFIX) :]: v for k, v in tensors.items() if k.startswith(SCORE_PREFIX)}
    groups = parameter_groups(trainer.segmentor.backbone)
    share = None
    if isinstance(trainer.tuner, SparseTuner) and trainer.tuner.selected_count:
        share = selected_share_by_block(trainer.tuner.masks(), groups)
    title = f"{trainer.config.method.name}: mean sensitivity per block"
    return sensitivity_heatmap(
        sensitivity_by_block(scores, groups), path, title=title, selected_share=share
    )


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
    quality = trainer.tuner.quality if isinstance(trainer.tuner, ScoredTuner) else None
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
    config = trainer.config
    return write_report(
        run_dir,
        title=f"{config.method.name} on {config.data.source}",
        config=config.to_dict(),
        results=result.results,
        source_domain=_source_name(result.results),
        figures=figures,
        notes=_notes(result) + _quality_notes(trainer),
    )


def train_and_report(
    config: RunConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    device: str | None = None,
) -> tuple[TrainResult, Path | None]:
    """Train ``config`` (continuing its run with ``resume``) and write its report (rank 0)."""
    trainer = Trainer(config, progress=progress, device=device)
    result = trainer.run(resume=resume)
    report = report_run(trainer, result) if trainer.is_main else None
    return result, report


def method_config(config: RunConfig, method: str, run_dir: Path) -> RunConfig:
    """``config`` for ``method`` in ``run_dir``: the configured options when ``method`` is the
    configured one, the method's defaults otherwise."""
    data = config.to_dict()
    options = data["method"]["options"] if method == config.method.name else {}
    data["method"] = {"name": method, "options": options}
    data["output"] = {"run_dir": str(run_dir)}
    return config_from_dict(data)


@dataclass
class Comparison:
    """Several methods' runs under one configuration."""

    results: dict[str, DomainResults]
    table: str
    report: Path
    seconds: dict[str, float]


def compare(
    config: RunConfig,
    methods: Sequence[str],
    *,
    out_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    device: str | None = None,
    title: str = "Method comparison",
    notes: Sequence[str] = (),
) -> Comparison:
    """Run each method (in ``out_dir/<method>``, default ``output.run_dir``) and write the
    Table-1-style comparison to ``out_dir/report.md``. With ``resume``, runs that already
    finished are read back (their results.json) and interrupted ones continue."""
    if not methods:
        raise ValueError("--methods: give at least one method")
    base = Path(out_dir if out_dir is not None else config.output.run_dir)
    results: dict[str, DomainResults] = {}
    seconds: dict[str, float] = {}
    for method in methods:
        run_config = method_config(config, method, base / method)
        run_dir = base / method
        has_run = (run_dir / CHECKPOINTS / "last.json").is_file()
        result, _ = train_and_report(
            run_config, resume=resume and has_run, progress=progress, device=device
        )
        if result.results is not None:
            results[method] = result.results
        seconds[method] = sum(result.stage_seconds.values())
    table = comparison_table(results, _source_name(next(iter(results.values()), None)))
    bars = domain_bars(
        {m: {d: v.miou for d, v in r.domains.items()} for m, r in results.items()},
        base / FIGURES / "comparison.png",
        title="mIoU per domain and method",
    )
    timing = "\n".join(
        ["| Method | Training time (s) |", "| --- | ---: |"]
        + [f"| {m} | {s:.1f} |" for m, s in seconds.items()]
    )
    report = write_report(
        base,
        title=title,
        config=config.to_dict(),
        results=None,
        source_domain=None,
        figures={"mIoU per domain and method": bars},
        notes=[*notes, *(f"{m}: see {m}/report.md" for m in methods)],
        extra_tables={"mIoU per domain (%)": table, "Time per method": timing},
        summary=(
            f"{len(results)} method(s) trained on `{config.data.source}` and evaluated on "
            f"{', '.join(config.data.targets)}; each run's own report is in its folder."
        ),
    )
    (base / "comparison.json").write_text(
        json.dumps(
            {"methods": {m: r.to_dict() for m, r in results.items()}, "seconds": seconds},
            indent=1,
        ),
        encoding="utf-8",
    )
    return Comparison(results, table, report, seconds)


def sensitivity_map(
    config: RunConfig, *, progress: bool = True, device: str | None = None
) -> tuple[dict[str, Tensor], Path | None]:
    """Warm up, estimate the method's sensitivity (DR-FIM for FisherTune), save it and draw
    the heatmap at ``run_dir/figures/sensitivity.png`` (rank 0); returns the scores and the
    figure."""
    trainer = Trainer(config, progress=progress, device=device)
    scores = trainer.estimate_sensitivity()
    if not trainer.is_main:
        return scores, None
    return scores, _sensitivity_figure(trainer, trainer.run_dir / FIGURES / "sensitivity.png")
