"""Does recomputing the head's BatchNorm statistics shrink the seed-to-seed spread?

A diagnostic of the benchmark selection (docs/benchmark_settings.md), on the baselines only.
The trainer evaluates the EMA weights with the BatchNorm running statistics the live weights
collected over the last batches. For every finished run of the given comparison folders
(``METHOD/seedK``), this re-evaluates the run's last checkpoint as is, then after recomputing
the statistics under the evaluated weights (cumulative average over ``--images`` source
training scenes, ``--images`` / batch micro-batches) either without augmentation or with the
training pipeline's (``--augmented``), and prints each method's target-average mean and
standard deviation over seeds and the paired differences to Freeze, in mIoU (%).

    python benchmarks/bn_statistics_spread.py runs/select_G runs/select_G_more [--augmented]
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

from fishertune.engine.config import load_config
from fishertune.engine.domain_sets import SOURCE_DOMAIN
from fishertune.engine.trainer import Trainer
from fishertune.evaluation.domains import DomainResults


def target_average(results: DomainResults) -> float:
    values = [m.miou for name, m in results.domains.items() if name != SOURCE_DOMAIN]
    return 100 * sum(values) / len(values)


@torch.no_grad()
def recompute(trainer: Trainer, images: int, augmented: bool) -> None:
    """Replace every BatchNorm's running statistics by their average over ``images``."""
    norms = [
        m for m in trainer.segmentor.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
    trainer.segmentor.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    batch = trainer.config.data.batch_size
    if augmented:
        seed = trainer.config.schedule.seed + 7919
        for x, _ in trainer.source_batches(seed=seed, start=0, stop=images // batch):
            trainer.segmentor(x)
    else:
        for first in range(0, images, batch):
            pairs = [trainer.train_set[i] for i in range(first, min(first + batch, images))]
            x = torch.stack([trainer.eval_transform(*pair)[0] for pair in pairs])
            trainer.segmentor(x.float())
    trainer.segmentor.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--augmented", action="store_true")
    args = parser.parse_args()
    before: dict[str, dict[int, float]] = defaultdict(dict)
    after: dict[str, dict[int, float]] = defaultdict(dict)
    for folder in args.folders:
        for run in sorted(folder.glob("*/seed*")):
            method, seed = run.parent.name, int(run.name.removeprefix("seed"))
            trainer = Trainer(load_config(run / "config.yaml"), progress=False)
            if not trainer.restore():
                continue
            before[method][seed] = target_average(trainer.evaluate())
            assert trainer.ema is not None, "the runs were made without an EMA"
            with trainer.ema.applied():
                recompute(trainer, args.images, args.augmented)
            after[method][seed] = target_average(trainer.evaluate())
            print(f"{method} seed {seed}: {before[method][seed]:.2f} -> {after[method][seed]:.2f}")
    for label, table in (("running statistics", before), ("recomputed", after)):
        print(f"\n{label}: target average, mean (sd over seeds)")
        for method, values in sorted(table.items()):
            series = list(values.values())
            print(f"  {method:8s} {statistics.mean(series):6.2f} ({statistics.stdev(series):.2f})")
        for method, values in sorted(table.items()):
            if method == "freeze":
                continue
            diffs = [v - table["freeze"][s] for s, v in values.items() if s in table["freeze"]]
            print(
                f"  {method} - freeze {statistics.mean(diffs):+.2f} ({statistics.stdev(diffs):.2f})"
            )


if __name__ == "__main__":
    main()
