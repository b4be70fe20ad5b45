"""Per-stage step time and memory of the staged trainer on the demo, FisherTune vs Full.

Runs the ``fishertune demo`` configuration (or ``--quick``) for ``fishertune`` and ``full``,
each in a fresh process, with identical data, steps and optimiser settings, and prints per
stage: steps, seconds per step, peak memory (CPU: the largest resident set sampled after each
step; CUDA: the allocator's peak), then FisherTune's whole training time (warm-up + estimation
+ tuning) relative to Full fine-tuning's on the same number of weight updates.
Target (issue 6): ≤ 1.2× including the estimation stage. Evaluation time is excluded.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

METHODS = ("fishertune", "full")


def run_one(method: str, quick: bool, out: Path) -> None:
    """Train ``method`` on the demo configuration and write its stage record to ``out``."""
    from fishertune.engine.trainer import Trainer
    from fishertune.workflows.demo import demo_config
    from fishertune.workflows.training import method_config

    config = method_config(demo_config(quick=quick), method, out.parent / method)
    trainer = Trainer(config, progress=False)
    result = trainer.run()
    steps = {
        "warmup": config.schedule.warmup_steps,
        "tune": config.schedule.tune_steps,
        "train": config.total_steps,
    }
    record = {
        "seconds": result.stage_seconds,
        "steps": steps,
        "memory_mb": result.peak_memory_mb,
    }
    out.write_text(json.dumps(record), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the demo's smoke-test size")
    parser.add_argument("--method", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.method is not None:
        run_one(args.method, args.quick, Path(args.out))
        return
    records: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for method in METHODS:
            out = Path(folder) / f"{method}.json"
            command = [sys.executable, __file__, "--method", method, "--out", str(out)]
            subprocess.run([*command, *(["--quick"] if args.quick else [])], check=True)
            records[method] = json.loads(out.read_text(encoding="utf-8"))
    print(f"{'method':12s} {'stage':10s} {'steps':>6s} {'s/step':>8s} {'total s':>8s} {'MiB':>7s}")
    for method, record in records.items():
        for stage, seconds in record["seconds"].items():
            count = record["steps"].get(stage)  # estimation makes no weight update
            per_step = f"{seconds / count:8.3f}" if count else f"{'-':>8s}"
            print(
                f"{method:12s} {stage:10s} {count or 0:6d} {per_step} {seconds:8.1f} "
                f"{record['memory_mb'][stage]:7.0f}"
            )
    totals = {m: sum(r["seconds"].values()) for m, r in records.items()}
    print(
        f"FisherTune / Full training time (estimation included): "
        f"{totals['fishertune'] / totals['full']:.2f}× ({totals['fishertune']:.1f} s vs "
        f"{totals['full']:.1f} s; target ≤ 1.2×)"
    )


if __name__ == "__main__":
    main()
