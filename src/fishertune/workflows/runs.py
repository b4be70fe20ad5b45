"""Training runs with their reports, method comparisons and sensitivity maps.

:func:`train_and_report` runs one configuration and writes ``report.md`` beside its
checkpoints: the configuration, the per-domain table, the training curves, the Fig. 6-style
sensitivity heatmap (methods that estimate one), a qualitative grid of one validation image
per domain and the tuner's selection diagnostics (where a sparse method's budget went, how far
each block's weights moved; :mod:`fishertune.reporting.selection_report`). :func:`compare`
runs several methods on the same configuration, one run directory each, and writes the
Table-1-style comparison with a bar chart. :func:`sensitivity_map` runs
only the warm-up and estimation stages and draws the heatmap.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from torch import Tensor

from fishertune.atomic import atomic_write
from fishertune.engine.config import RunConfig, config_from_dict
from fishertune.engine.estimate_file import read_estimate
from fishertune.engine.run_checkpoints import has_checkpoint
from fishertune.engine.trainer import Trainer, TrainResult
from fishertune.evaluation.domains import SOURCE_DOMAIN, DomainResults
from fishertune.models import parameter_groups
from fishertune.reporting import (
    comparison_table,
    domain_bars,
    interval_table,
    paired_intervals,
    paired_table,
    qualitative_grid,
    read_metrics_csv,
    seed_intervals,
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
from fishertune.workflows.validity import check_validity

__all__ = [
    "Comparison",
    "compare",
    "method_config",
    "saved_sensitivity",
    "seed_run_dir",
    "sensitivity_map",
    "train_and_report",
]

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
        source_domain=_source_name(result.results),
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
) -> tuple[TrainResult, Path | None]:
    """Train ``config`` (continuing its run with ``resume``) and write its report (rank 0)."""
    trainer = Trainer(config, progress=progress, device=device)
    result = trainer.run(resume=resume)
    report = report_run(trainer, result) if trainer.is_main else None
    return result, report


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


@dataclass
class Comparison:
    """Several methods' runs under one configuration, each with the same seeds.

    Attributes:
        runs: per method, its results per seed (in ``seeds`` order).
        seeds: the seeds every method ran with.
        table: the printed table: Table 1 with one seed; with several, mean ± 95% half-width
            per domain, then the paired differences to the reference method.
        report: the comparison's report.md.
        seconds: per method, its optimisation stages' time summed over seeds.
    """

    runs: dict[str, list[DomainResults]]
    seeds: list[int]
    table: str
    report: Path
    seconds: dict[str, float]


def seed_run_dir(base: Path, method: str, seed: int, seeded: bool) -> Path:
    """Where one method × seed runs: ``base/<method>`` for a single, configured seed,
    ``base/<method>/seed<k>`` when seeds were asked for."""
    return base / method / f"seed{seed}" if seeded else base / method


def compare(
    config: RunConfig,
    methods: Sequence[str],
    *,
    out_dir: str | Path | None = None,
    seeds: Sequence[int] | None = None,
    reference: str = "freeze",
    validity: bool = False,
    resume: bool = False,
    progress: bool = True,
    device: str | None = None,
    title: str = "Method comparison",
    notes: Sequence[str] = (),
) -> Comparison:
    """Run each method with each seed and write the comparison to ``out_dir/report.md``.

    ``seeds`` (default: the configured ``schedule.seed`` alone) each set ``schedule.seed``,
    which fixes the decoder's initialisation, the data order and augmentation and the methods'
    random draws, the pretrained backbone being shared; every method × seed is its own run in
    :func:`seed_run_dir`. With two or more seeds the report gives mean ± 95% half-width per
    domain and the paired difference of every method to ``reference`` (method.md §11).
    ``validity`` adds the benchmark's validity checks V1–V3 on the baselines
    (:func:`~fishertune.workflows.validity.check_validity`). With ``resume``, runs that already
    finished are read back and interrupted ones continue.
    """
    if not methods:
        raise ValueError("--methods: give at least one method")
    seeded = seeds is not None
    seed_list = list(seeds) if seeds is not None else [config.schedule.seed]
    if not seed_list or len(set(seed_list)) != len(seed_list):
        raise ValueError(f"--seeds: give distinct seeds, got {seed_list}")
    if len(seed_list) > 1 and reference not in methods:
        raise ValueError(f"--reference: {reference!r} is not among --methods {list(methods)}")
    base = Path(out_dir if out_dir is not None else config.output.run_dir)
    runs: dict[str, list[DomainResults]] = {}
    seconds: dict[str, float] = {}
    for method in methods:
        for seed in seed_list:
            run_dir = seed_run_dir(base, method, seed, seeded)
            run_config = method_config(config, method, run_dir, seed if seeded else None)
            result, _ = train_and_report(
                run_config,
                resume=resume and has_checkpoint(run_dir),
                progress=progress,
                device=device,
            )
            if result.results is not None:
                runs.setdefault(method, []).append(result.results)
            seconds[method] = seconds.get(method, 0.0) + sum(result.stage_seconds.values())
    source = _source_name(next((r[0] for r in runs.values() if r), None))
    record: dict[str, Any] = {"seeds": seed_list, "methods": {}, "seconds": seconds}
    for method, results in runs.items():
        record["methods"][method] = {
            "seeds": {str(seed): r.to_dict() for seed, r in zip(seed_list, results, strict=True)}
        }
    if len(seed_list) == 1:
        single = comparison_table({m: r[0] for m, r in runs.items()}, source)
        caption = f"mIoU (%), one run per method (seed {seed_list[0]}; --seeds N for intervals)"
        table = f"{caption}\n\n{single}"
        tables = {"mIoU per domain (%)": single}
        bars = domain_bars(
            {m: {d: v.miou for d, v in r[0].domains.items()} for m, r in runs.items()},
            base / FIGURES / "comparison.png",
            title="mIoU per domain and method",
        )
    else:
        intervals = seed_intervals(runs, source)
        paired = paired_intervals(runs, reference, source)
        spread = interval_table(runs, source)
        differences = paired_table(runs, reference, source)
        table = (
            f"{spread}\n\n{differences}\n\n* the 95% interval of the paired difference excludes 0"
        )
        tables = {
            f"mIoU per domain (%), mean ± 95% CI over {len(seed_list)} seeds": spread,
            f"Paired difference to {reference} (mIoU points; * the interval excludes 0)": (
                differences
            ),
        }
        bars = domain_bars(
            {m: {c: i.mean for c, i in cols.items()} for m, cols in intervals.items()},
            base / FIGURES / "comparison.png",
            title=f"mIoU per domain and method, 95% CI over {len(seed_list)} seeds",
            errors={m: {c: i.half_width for c, i in cols.items()} for m, cols in intervals.items()},
        )
        record["reference"] = reference
        for method, cols in intervals.items():
            record["methods"][method]["mean"] = {c: i.to_dict() for c, i in cols.items()}
        for method, cols in paired.items():
            record["methods"][method]["paired"] = {c: i.to_dict() for c, i in cols.items()}
    if validity:
        checks = check_validity(runs, source)
        tables["Validity of the benchmark (baselines only)"] = checks.table()
        table = f"{table}\n\nValidity of the benchmark (baselines only):\n\n{checks.table()}"
        record["validity"] = checks.to_dict()
    timing = "\n".join(
        ["| Method | Optimisation time (s), all seeds |", "| --- | ---: |"]
        + [f"| {m} | {s:.1f} |" for m, s in seconds.items()]
    )
    report = write_report(
        base,
        title=title,
        config=config.to_dict(),
        results=None,
        source_domain=None,
        figures={"mIoU per domain and method": bars},
        notes=[
            *notes,
            *(
                f"{m}: see {seed_run_dir(Path(), m, s, seeded).as_posix()}/report.md"
                for m in methods
                for s in seed_list
            ),
        ],
        extra_tables={**tables, "Time per method": timing},
        summary=(
            f"{len(runs)} method(s) trained on `{config.data.source}` with seed(s) "
            f"{', '.join(map(str, seed_list))} and evaluated on "
            f"{', '.join(config.data.targets)}; each run's own report is in its folder."
        ),
    )
    atomic_write(
        base / "comparison.json",
        lambda path: path.write_text(json.dumps(record, indent=1), encoding="utf-8"),
    )
    return Comparison(runs, seed_list, table, report, seconds)


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
