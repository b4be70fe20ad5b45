"""The one experiment runner: a grid of arms × seeds, each arm × seed one training run.

``fishertune compare`` is this runner with the arms given on the command line (one arm per
method), ``fishertune study`` with the arms of its parts. A run is a :class:`GridRun`: its
arm's label, its seed and its configuration, whose ``output.run_dir`` is the run's folder
(:func:`run_folder`: ``BASE/<arm>/seed<k>``). When a run finishes, :func:`run_record` (the
per-domain results, the final source training loss, the trainable backbone parameters, the
estimate's quality, the Fig. 6 table of its scores, the selection diagnostics and the
optimisation time) is written atomically beside its checkpoints as :data:`RECORD`.

The resume rule (:func:`run_grid`): a run whose record exists is read back (a record made
with other settings is refused in one line), a run with a checkpoint continues from it, the
others start; so a kill costs at most the work since the last checkpoint. Runs go in the
order given (seed by seed: an interrupted grid has every arm at its first seeds, which is
what paired comparisons need), with one line on stderr per finished run and the time left.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fishertune.atomic import atomic_write
from fishertune.engine.config import RunConfig
from fishertune.engine.trainer import Trainer, TrainResult
from fishertune.engine.training_state import has_checkpoint
from fishertune.evaluation.intervals import json_number
from fishertune.reporting import read_metrics_csv
from fishertune.workflows.training import saved_sensitivity, train_and_report

__all__ = [
    "RECORD",
    "GridRun",
    "Records",
    "finished_records",
    "run_folder",
    "run_grid",
    "run_record",
    "sensitivity_table",
    "train_run",
]

RECORD = "run_record.json"
"""A finished run's numbers, beside its checkpoints."""

_EARLIER_RECORD = "study_run.json"
"""The name records had before the study and compare shared this runner."""


@dataclass(frozen=True)
class GridRun:
    """One arm × seed: the arm's label, the seed and the run's configuration."""

    arm: str
    seed: int
    config: RunConfig

    @property
    def folder(self) -> Path:
        """The run's folder (its configuration's ``output.run_dir``)."""
        return Path(self.config.output.run_dir)


Records = dict[tuple[str, int], dict[str, Any]]
"""Finished runs' records by (arm label, seed)."""

Train = Callable[[GridRun, bool, Records], dict[str, Any]]
"""How a grid trains one run: ``(run, resume from its checkpoint, the records so far)`` →
the run's record."""


def run_folder(base: Path, arm: str, seed: int, *, seeded: bool = True) -> Path:
    """Where one arm × seed runs: ``base/<arm>/seed<k>``; ``base/<arm>`` when the grid has the
    configured seed alone and was not asked for seeds (a one-seed ``compare``)."""
    return base / arm / f"seed{seed}" if seeded else base / arm


def _final_loss(run_dir: Path, updates: int) -> float:
    """Mean training loss over the last tenth of the weight updates (at least one)."""
    rows = read_metrics_csv(run_dir / "metrics.csv")
    losses = [float(r["loss"]) for r in rows if isinstance(r.get("loss"), float)]
    if not losses:
        return math.nan
    window = max(1, updates // 10)
    return math.fsum(losses[-window:]) / len(losses[-window:])


def sensitivity_table(trainer: Trainer) -> list[list[float | None]] | None:
    """The Fig. 6 table (block × Q/K/V/FFN means) of the run's saved scores, if any."""
    table = saved_sensitivity(trainer)
    if table is None:
        return None
    return [[json_number(float(v)) for v in row] for row in table]


def run_record(config: RunConfig, trainer: Trainer, result: TrainResult) -> dict[str, Any]:
    """The one per-run record of a finished run (see the module docstring)."""
    if result.results is None:
        raise ValueError(f"{config.output.run_dir}: the run evaluated no domain")
    quality = trainer.tuner.quality
    return {
        "identity": config.identity(),
        "miou": {name: json_number(m.miou) for name, m in result.results.domains.items()},
        "results": result.results.to_dict(),
        "train_loss": json_number(_final_loss(result.run_dir, config.total_steps)),
        "trainable": result.trainable.backbone,
        "quality": None if quality is None else quality.to_dict(),
        "sensitivity": sensitivity_table(trainer),
        "diagnostics": trainer.diagnostics_record(),
        "seconds": sum(result.stage_seconds.values()),
    }


def train_run(
    config: RunConfig, *, resume: bool, progress: bool, device: str | None, report: bool
) -> dict[str, Any]:
    """Train ``config`` (continuing it with ``resume``), write its ``report.md`` when
    ``report`` (rank 0, :func:`~fishertune.workflows.training.train_and_report`) and return
    its :func:`run_record`."""
    trainer, result, _ = train_and_report(
        config, resume=resume, progress=progress, device=device, report=report
    )
    return run_record(config, trainer, result)


def _read_record(run: GridRun) -> dict[str, Any] | None:
    """The run's record when it exists; refuses one made with other settings, or one
    written before this runner, in one line."""
    path = run.folder / RECORD
    if not path.is_file():
        if (run.folder / _EARLIER_RECORD).is_file():
            raise ValueError(
                f"{run.folder / _EARLIER_RECORD}: a record written before compare and study "
                f"shared one runner; rename it to {RECORD} to reuse the run"
            )
        return None
    try:
        record: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a readable run record ({error})") from None
    identity = record.get("identity") if isinstance(record, dict) else None
    if not isinstance(identity, dict) or not run.config.is_run(identity):
        raise ValueError(
            f"{path}: this run was made with other settings than those asked for now; use "
            "another --out, or remove the folder to redo it"
        )
    return record


def _write_record(target: Path, record: Mapping[str, Any]) -> None:
    """``record`` as JSON into ``target``, atomically."""
    text = json.dumps(record, indent=1, ensure_ascii=False)
    atomic_write(target, lambda path: path.write_text(text, encoding="utf-8"))


def finished_records(runs: Sequence[GridRun], *, command: str, grouped_as: str) -> Records:
    """The records of every run, all of which must have finished (``--report-only``); the
    error names the grid's ``command`` and what its runs are ``grouped_as`` (e.g. parts)."""
    records: Records = {}
    missing = []
    for run in runs:
        record = _read_record(run)
        if record is None:
            missing.append(f"{run.arm} seed {run.seed}")
        else:
            records[(run.arm, run.seed)] = record
    if missing:
        raise ValueError(
            f"--report-only: {len(missing)} run(s) of these {grouped_as} and seeds have not "
            f"finished (e.g. {missing[0]}); choose finished seeds, or continue the {command} "
            "with --resume"
        )
    return records


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


class _Clock:
    """The grid's remaining time from the runs measured so far (per method, else all)."""

    def __init__(self) -> None:
        self.measured: dict[str, list[float]] = {}

    def add(self, method: str, seconds: float) -> None:
        self.measured.setdefault(method, []).append(seconds)

    def remaining(self, runs: Sequence[GridRun]) -> float | None:
        everything = [s for values in self.measured.values() for s in values]
        if not everything:
            return None
        overall = math.fsum(everything) / len(everything)
        total = 0.0
        for run in runs:
            values = self.measured.get(run.config.method.name)
            total += math.fsum(values) / len(values) if values else overall
        return total


def run_grid(runs: Sequence[GridRun], train: Train, *, resume: bool, command: str) -> Records:
    """Run (or, with ``resume``, read back) every run with ``train``; returns the records by
    (arm, seed). ``command`` names the grid in the progress lines."""
    labels = [(run.arm, run.seed) for run in runs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"{command}: an arm × seed is asked for twice")
    records: Records = {}
    pending: list[GridRun] = []
    for run in runs:
        record = _read_record(run) if resume else None
        if record is not None:
            records[(run.arm, run.seed)] = record
        else:
            pending.append(run)
    clock = _Clock()
    done = len(runs) - len(pending)
    for index, run in enumerate(pending):
        started = time.perf_counter()
        record = train(run, resume and has_checkpoint(run.folder), records)
        seconds = time.perf_counter() - started
        _write_record(run.folder / RECORD, record)
        records[(run.arm, run.seed)] = record
        clock.add(run.config.method.name, seconds)
        left = clock.remaining(pending[index + 1 :])
        estimate = (
            "" if left is None or index + 1 == len(pending) else f"; about {_duration(left)} left"
        )
        print(
            f"{command}: {done + index + 1}/{len(runs)} runs done ({run.arm}, seed {run.seed}, "
            f"{seconds:.0f} s){estimate}",
            file=sys.stderr,
            flush=True,
        )
    return records
