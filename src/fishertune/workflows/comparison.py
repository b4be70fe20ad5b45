"""``fishertune compare``: several methods, each with the same seeds, on one configuration.

:func:`compare` trains every method × seed as its own run of the experiment runner
(:mod:`~fishertune.workflows.grid`, each with its report and record) and writes the
Table-1-style comparison: one run per method, or with several seeds the mean ± 95% interval
per domain and the paired difference of every method to a reference (method.md §11), a bar
chart, optional validity checks, ``report.md`` and ``comparison.json``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fishertune.atomic import atomic_write
from fishertune.engine.config import RunConfig
from fishertune.evaluation.domains import DomainResults
from fishertune.reporting import (
    comparison_table,
    domain_bars,
    interval_table,
    paired_intervals,
    paired_table,
    seed_intervals,
    write_report,
)
from fishertune.workflows.grid import GridRun, Records, run_folder, run_grid, train_run
from fishertune.workflows.training import FIGURES, method_config, source_name
from fishertune.workflows.validity import check_validity

__all__ = ["Comparison", "compare"]


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
    random draws, the pretrained backbone being shared. The comparison is the experiment
    runner of :mod:`~fishertune.workflows.grid` with one arm per method: every method × seed
    is its own run in :func:`~fishertune.workflows.grid.run_folder` (``<out>/<method>`` for
    the configured seed alone) with its report and its record. With two or more seeds the
    report gives mean ± 95% half-width per domain and the paired difference of every method
    to ``reference`` (method.md §11). ``validity`` adds the benchmark's validity checks V1–V3
    on the baselines (:func:`~fishertune.workflows.validity.check_validity`). With
    ``resume``, runs whose record exists are read back, interrupted ones continue from their
    last checkpoint (a folder written before records existed continues from its checkpoints).
    """
    if not methods:
        raise ValueError("--methods: give at least one method")
    seeded = seeds is not None
    seed_list = list(seeds) if seeds is not None else [config.schedule.seed]
    if not seed_list or len(set(seed_list)) != len(seed_list):
        raise ValueError(f"--seeds: give distinct seeds, got {seed_list}")
    if len(seed_list) > 1 and reference not in methods:
        raise ValueError(f"--reference: {reference!r} is not among --methods {list(methods)}")
    if len(set(methods)) != len(methods):
        raise ValueError(f"--methods: give each method once, got {list(methods)}")
    base = Path(out_dir if out_dir is not None else config.output.run_dir)
    grid = [
        GridRun(
            method,
            seed,
            method_config(
                config,
                method,
                run_folder(base, method, seed, seeded=seeded),
                seed if seeded else None,
            ),
        )
        for seed in seed_list
        for method in methods
    ]

    def train(run: GridRun, resumable: bool, records: Records) -> dict[str, Any]:
        return train_run(
            run.config, resume=resumable, progress=progress, device=device, report=True
        )

    records = run_grid(grid, train, resume=resume, command="compare")
    runs = {
        method: [DomainResults.from_dict(records[(method, seed)]["results"]) for seed in seed_list]
        for method in methods
    }
    seconds = {
        method: sum(float(records[(method, seed)]["seconds"]) for seed in seed_list)
        for method in methods
    }
    source = source_name(next((r[0] for r in runs.values() if r), None))
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
                f"{m}: see {run_folder(Path(), m, s, seeded=seeded).as_posix()}/report.md"
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
