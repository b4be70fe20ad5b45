"""``fishertune study``: the paper's experiments in miniature on the embedded benchmark.

Every part of :data:`~fishertune.workflows.study_parts.PARTS` runs its arms with the same
settings (the demo's, :data:`~fishertune.workflows.demo.DEMO_SETTINGS`) and the same seeds.
The study is the experiment runner of :mod:`~fishertune.workflows.grid` with its parts' arms:
an arm × seed is one run in ``OUT/runs/<arm key>/seed<k>`` (arms that several parts share run
once) whose record (:func:`~fishertune.workflows.grid.run_record`) is written beside it when it
finishes; ``--resume`` reads those back, continues an interrupted run from its last checkpoint
and starts the others, so a kill costs at most the work since the last checkpoint. An arm that
may reuse its F arm's run (:attr:`~fishertune.workflows.study_parts.Arm.same_as_f`) estimates
first and reuses it when its selection is F's. The study then writes ``study.json`` (every
seed's numbers, the intervals, the paired differences and the verdicts, all computed from the
runs), ``study.md`` (rendered from ``study.json`` by
:func:`~fishertune.reporting.study_report.render_markdown`) and the figures
(:func:`~fishertune.reporting.study_figures.draw_figures`).

Per arm and column, the mean over seeds ± the 95% Student-t half-width; per pair, the mean
per-seed difference ± its half-width; a claim is *supported* when its difference's interval
excludes 0 in the paper's direction, *contradicted* when it excludes 0 the other way, *not
resolved* otherwise; a part is supported when all its claims are, contradicted when any is
(:func:`~fishertune.evaluation.intervals.verdict`, method.md §11).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fishertune.atomic import atomic_write
from fishertune.engine.config import RunConfig, config_from_dict
from fishertune.engine.trainer import Trainer
from fishertune.evaluation.domains import AVERAGE_HEADER, target_average
from fishertune.evaluation.intervals import (
    Row,
    column_intervals,
    combined_verdict,
    json_number,
    number,
    paired_columns,
    verdict,
)
from fishertune.reporting.study_figures import draw_figures
from fishertune.reporting.study_report import LOSS_COLUMN, render_markdown
from fishertune.workflows.demo import DEMO_SETTINGS, merge_settings
from fishertune.workflows.grid import (
    GridRun,
    Records,
    Train,
    finished_records,
    run_folder,
    run_grid,
    sensitivity_table,
    train_run,
)
from fishertune.workflows.study_parts import PARTS, TARGET, Arm, Claim, Part, part_names
from fishertune.workflows.training import method_config

__all__ = [
    "QUICK_STUDY_SETTINGS",
    "STUDY_SETTINGS",
    "Study",
    "run_study",
    "study_config",
]

STUDY_SETTINGS: dict[str, Any] = {"schedule": {"eval_every": 0}}
"""What the study changes in the demo's settings: each run is evaluated once, at its end (an
evaluation during training changes nothing the run learns; tested), which saves 12 s a run."""

QUICK_STUDY_SETTINGS: dict[str, Any] = {
    "model": {
        "backbone": "vit_small_patch16_224",
        "pretrained": False,
        "img_size": [32, 64],
        "patch_size": 8,
        "options": {"depth": 2, "embed_dim": 32, "num_heads": 2, "out_indices": [1]},
    },
    "method": {"options": {"variational_steps": 3, "refresh_every": 2}},
    "data": {
        "synthetic_size": [32, 64],
        "crop": [32, 64],
        "train_images": 16,
        "eval_images": 4,
        "batch_size": 4,
    },
    "schedule": {
        "warmup_steps": 2,
        "estimate_steps": 2,
        "tune_steps": 4,
        "checkpoint_every": 2,
    },
}
"""``--quick``: every part and arm at a smoke-test size (tests run it): a randomly
initialised 2-block, 32-wide ViT of the same family on 32 × 64 scenes, 6 updates."""

_SENSITIVITY_ARMS = ("F", "ΔF", "DRF")
"""The ``scores`` arms whose estimates draw the paper's Fig. 6."""


def study_config(*, quick: bool = False, out_dir: str | Path | None = None) -> RunConfig:
    """The study's settings: the demo's with :data:`STUDY_SETTINGS` (``quick``: at the
    smoke-test size)."""
    settings = merge_settings(DEMO_SETTINGS, STUDY_SETTINGS)
    if quick:
        settings = merge_settings(settings, QUICK_STUDY_SETTINGS)
    settings["output"]["run_dir"] = (
        str(out_dir) if out_dir is not None else "runs/study" + ("_quick" if quick else "")
    )
    return config_from_dict(settings)


def _run_config(config: RunConfig, arm: Arm, run_dir: Path, seed: int) -> RunConfig:
    return method_config(config, arm.method, run_dir, seed, dict(arm.options))


def _write_text(target: Path, text: str) -> None:
    """``text`` into ``target`` atomically (UTF-8)."""
    atomic_write(target, lambda path: path.write_text(text, encoding="utf-8"))


def _reused(
    config: RunConfig,
    reference: Mapping[str, Any],
    *,
    resume: bool,
    progress: bool,
    device: str | None,
) -> dict[str, Any] | None:
    """The record of an arm whose DRF selection may be its F arm's (:attr:`Arm.same_as_f`):
    runs the warm-up and the estimation only; when the DRF selection is exactly the F
    selection (overlap 1 at the budget, the only selection of a constant schedule), returns
    ``reference``'s numbers with this arm's identity and estimate, marked ``reused``; None
    otherwise (the run is then trained on from its estimation stage)."""
    trainer = Trainer(config, progress=progress, device=device)
    trainer.estimate_sensitivity(resume=resume)
    quality = trainer.tuner.quality
    term = None if quality is None else quality.domain_term
    if term is None or term.overlap_f != 1.0:
        return None
    assert quality is not None
    return {
        **reference,
        "identity": config.identity(),
        "quality": quality.to_dict(),
        "sensitivity": sensitivity_table(trainer),
        "reused": reference["identity"]["method"],
    }


def _grid(
    parts: Sequence[Part], config: RunConfig, seeds: Sequence[int], out: Path
) -> tuple[list[GridRun], dict[str, str]]:
    """Every distinct arm × seed of ``parts`` (shared arms once), seed by seed, each in
    ``out/runs/<arm key>/seed<k>``; and per arm key that may reuse another arm's run
    (:attr:`Arm.same_as_f`), that arm's key."""
    arms: dict[str, Arm] = {}
    reuses: dict[str, str] = {}
    base = (config.method.name, config.method.options)
    for part in parts:
        for arm in part.arms:
            key = arm.key(*base)
            arms.setdefault(key, arm)
            if arm.same_as_f is not None:
                reuses.setdefault(key, part.arm(arm.same_as_f).key(*base))
    runs = [
        GridRun(key, seed, _run_config(config, arm, run_folder(out / "runs", key, seed), seed))
        for seed in seeds
        for key, arm in arms.items()
    ]
    return runs, reuses


def _study_train(reuses: Mapping[str, str], *, progress: bool, device: str | None) -> Train:
    """How the study trains a run: an arm that may reuse its F arm's run estimates first and
    takes that run's numbers when its selection is F's (:func:`_reused`), else trains."""

    def train(run: GridRun, resume: bool, records: Records) -> dict[str, Any]:
        reference_key = reuses.get(run.arm)
        reference = None if reference_key is None else records.get((reference_key, run.seed))
        if reference is not None:
            record = _reused(run.config, reference, resume=resume, progress=progress, device=device)
            if record is not None:
                return record
            resume = True  # continue after the estimation stage
        return train_run(run.config, resume=resume, progress=progress, device=device, report=False)

    return train


def _values(record: Mapping[str, Any]) -> dict[str, float]:
    """A run's numbers per column (mIoU as fractions)."""
    miou = {name: number(value) for name, value in record["miou"].items()}
    return {**miou, AVERAGE_HEADER: target_average(miou), LOSS_COLUMN: number(record["train_loss"])}


def _quality_values(record: Mapping[str, Any]) -> dict[str, float]:
    """The estimate's reliability (Spearman ρ of the two halves per score) and agreement."""
    quality = record.get("quality")
    if not quality:
        return {}
    values = {
        f"split-half ρ {name}": float(v["spearman"]) for name, v in quality["reliability"].items()
    }
    if quality.get("agreement"):
        values["stable F vs diagonal ρ"] = float(quality["agreement"]["spearman"])
        values["stable F vs diagonal top-k overlap"] = float(quality["agreement"]["overlap"])
    term = quality.get("domain_term")
    if term:
        values["DRF top-k ∩ F"] = float(term["overlap_f"])
        values["DRF top-k ∩ ΔF"] = float(term["overlap_df"])
        values["ρ(F, ΔF)"] = float(term["spearman_f_df"])
    return values


def _selection_values(record: Mapping[str, Any]) -> dict[str, float]:
    """Where the run's selection put the budget (Gini, the Q / K / V / FFN shares) and how far
    the backbone moved (the mean over blocks of ‖θ_end − θ_pre‖ / ‖θ_pre‖), from its
    diagnostics; empty for runs without them."""
    diagnostics = record.get("diagnostics") or {}
    values: dict[str, float] = {}
    selection = diagnostics.get("selection")
    if selection:
        values["Gini"] = number(selection["gini"])
        shares = selection["share_by_kind"]
        for kind in ("Q", "K", "V", "FFN"):
            values[f"{kind} share"] = number(shares.get(kind, 0.0))
    changes = [c for c in diagnostics.get("weight_change") or () if c["block"] is not None]
    if changes:
        relative = [number(c["relative"]) for c in changes]
        values["‖Δθ‖/‖θ‖ per block"] = math.fsum(relative) / len(relative)
    return values


def _intervals(rows: Sequence[Row]) -> dict[str, Any]:
    """:func:`~fishertune.evaluation.intervals.column_intervals` as JSON-ready records."""
    return {column: i.to_dict() for column, i in column_intervals(rows).items()}


def _claim_column(claim: Claim) -> str:
    return AVERAGE_HEADER if claim.metric == TARGET else LOSS_COLUMN


def _part_record(
    part: Part,
    config: RunConfig,
    seeds: Sequence[int],
    records: Mapping[tuple[str, int], Mapping[str, Any]],
) -> dict[str, Any]:
    """Everything the part's table, figure and verdict need, from the runs' records."""
    per_arm: dict[str, list[dict[str, float]]] = {}
    arms: dict[str, Any] = {}
    for arm in part.arms:
        key = arm.key(config.method.name, config.method.options)
        runs = [records[(key, seed)] for seed in seeds]
        per_arm[arm.label] = [_values(r) for r in runs]
        arms[arm.label] = {
            "key": key,
            "method": arm.method,
            "options": dict(arm.options),
            "trainable": runs[0]["trainable"],
            "diagnostics": runs[0].get("diagnostics"),
            "seeds": {
                str(seed): {c: json_number(v) for c, v in values.items()}
                for seed, values in zip(seeds, per_arm[arm.label], strict=True)
            },
            "mean": _intervals(per_arm[arm.label]),
            "quality": _intervals([_quality_values(r) for r in runs]),
        }
        selection = _intervals([_selection_values(r) for r in runs])
        if selection:
            arms[arm.label]["selection"] = selection
    pairs = []
    for label, reference in part.pairs:
        differences = paired_columns(per_arm[label], per_arm[reference])
        pairs.append(
            {
                "arm": label,
                "reference": reference,
                "difference": {c: i.to_dict() for c, i in differences.items()},
            }
        )
    claims: list[dict[str, Any]] = []
    for claim in part.claims:
        column = _claim_column(claim)
        difference = paired_columns(per_arm[claim.arm], per_arm[claim.reference])[column]
        claims.append(
            {
                "claim": claim.describe(),
                "column": column,
                "higher": claim.higher,
                "difference": difference.to_dict(),
                "verdict": verdict(difference, claim.higher),
            }
        )
    return {
        "paper": part.paper,
        "claim": part.claim,
        "verdict": combined_verdict([c["verdict"] for c in claims]),
        "figure": part.figure,
        "groups": [[group, [list(s) for s in series]] for group, series in part.groups],
        "arms": arms,
        "pairs": pairs,
        "claims": claims,
    }


def _sensitivity_record(
    config: RunConfig, seeds: Sequence[int], records: Mapping[tuple[str, int], Mapping[str, Any]]
) -> dict[str, Any] | None:
    """Fig. 6's tables (F, ΔF, DRF) from the ``scores`` part's runs at the first seed."""
    scores = next((p for p in PARTS if p.name == "scores"), None)
    if scores is None:
        return None
    tables = {}
    for label in _SENSITIVITY_ARMS:
        key = scores.arm(label).key(config.method.name, config.method.options)
        record = records.get((key, seeds[0]))
        if record is None or record.get("sensitivity") is None:
            return None
        tables[label] = record["sensitivity"]
    return {"seed": seeds[0], "tables": tables}


@dataclass(frozen=True)
class Study:
    """What :func:`run_study` wrote: the record and ``study.md``."""

    record: dict[str, Any]
    markdown: Path


def run_study(
    *,
    only: Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    out_dir: str | Path | None = None,
    resume: bool = False,
    quick: bool = False,
    progress: bool = True,
    device: str | None = None,
    report_only: bool = False,
) -> Study:
    """Run the study's parts (``only``: those named) with ``seeds`` and write its outputs;
    ``report_only``: from the finished runs' records in ``out_dir`` alone, training nothing
    (e.g. the seeds finished so far of a study still running)."""
    names = list(only) if only else part_names()
    unknown = sorted(set(names) - set(part_names()))
    if unknown:
        raise ValueError(f"--only: unknown part(s) {unknown}; choose from {part_names()}")
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds: the study needs at least two distinct seeds, got {list(seeds)}")
    config = study_config(quick=quick, out_dir=out_dir)
    out = Path(config.output.run_dir)
    if not (resume or report_only) and (out / "runs").exists():
        raise FileExistsError(
            f"{out} already holds a study; pass --resume to continue it, or choose another --out"
        )
    parts = [p for p in PARTS if p.name in names]
    runs, reuses = _grid(parts, config, seeds, out)
    if report_only:
        records = finished_records(runs, command="study", grouped_as="parts")
    else:
        train = _study_train(reuses, progress=progress, device=device)
        records = run_grid(runs, train, resume=resume, command="study")
    seed_list = list(seeds)
    study: dict[str, Any] = {
        "settings": config.identity(),
        "seeds": seed_list,
        "parts": {p.name: _part_record(p, config, seed_list, records) for p in parts},
    }
    sensitivity = _sensitivity_record(config, seed_list, records) if "scores" in names else None
    if sensitivity is not None:
        study["sensitivity"] = sensitivity
    _write_text(out / "study.json", json.dumps(study, indent=1, ensure_ascii=False))
    figures = draw_figures(study, out / "figures")
    markdown = render_markdown(study, figures)
    _write_text(out / "study.md", markdown)
    return Study(copy.deepcopy(study), out / "study.md")
