"""How well FisherTune's sensitivity estimates estimate, on the demo backbone (method.md §6).

Runs the demo's decoder warm-up and estimation stage (``configs/demo.yaml``, FisherTune at its
defaults), then compares, over all candidate elements of the backbone (Q/K/V/FFN of 6 blocks):

- the reference: the diagonal Fisher (per-image squared gradients, given labels) on 40 source
  batches that the estimation never sees, clean and under the stage's simulated shift, with
  ΔF and DRF from them by Eqs. 5 and 7;
- the stable (variational) estimate at the demo's estimation budget (10 batches, 25 steps per
  fit) and at one pass over the batches (10 steps, the diagonal estimate's compute);
- the diagonal estimate on the same 10 batches (given labels).

For each of F, ΔF, DRF it prints the Spearman rank correlation and the top-5% overlap (the
budget's share of the backbone) with the reference, and the split-half reliability (the two
halves of the estimation batches, estimated separately). Targets (issue 10): the stable F
against the reference, Spearman ≥ 0.8 and top-5% overlap ≥ 0.6.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any

import torch

from fishertune.engine.trainer import ESTIMATE_SEED_OFFSET, Trainer
from fishertune.sensitivity import Agreement, diagonal_fisher, dr_fim
from fishertune.tuners.base import entry_perturbation
from fishertune.tuners.fishertune import FisherTuneTuner
from fishertune.tuners.sparse import seeded_generator
from fishertune.workflows.demo import demo_config

REFERENCE_SEED_OFFSET = 104_729
"""The reference batches come from a stream the estimation stage never draws from."""


def _row(name: str, steps: str, versus: Agreement, halves: Agreement | None) -> str:
    split = "n/a" if halves is None else f"{halves.spearman:.2f} / {halves.overlap:.2f}"
    return f"| {name} | {steps} | {versus.spearman:.2f} / {versus.overlap:.2f} | {split} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reference-batches", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        config = demo_config(out_dir=folder)
        trainer = Trainer(config, progress=False)
        start = time.perf_counter()
        trainer.estimate_sensitivity()
        print(f"warm-up + estimation stage: {time.perf_counter() - start:.1f} s")
    tuner = trainer.tuner
    assert isinstance(tuner, FisherTuneTuner)
    assert tuner.quality is not None
    print("the run's own report of its estimate:")
    for line in tuner.quality.describe():
        print(f"  {line}")
    schedule = config.schedule
    estimation = list(
        trainer.source_batches(
            seed=schedule.seed + ESTIMATE_SEED_OFFSET, start=0, stop=schedule.estimate_steps
        )
    )
    reference_data = list(
        trainer.source_batches(
            seed=schedule.seed + REFERENCE_SEED_OFFSET, start=0, stop=args.reference_batches
        )
    )
    params = tuner.candidate_params()
    device = next(iter(params.values())).device
    cfg = tuner.config
    shift = entry_perturbation(
        tuner.segmentor, cfg.perturbation_scale, seeded_generator(device, cfg.seed)
    )

    def reference(batches: list[Any]) -> dict[str, dict[str, torch.Tensor]]:
        clean = diagonal_fisher(tuner.segmentor, batches, params=params, labels="given")
        shifted = diagonal_fisher(
            tuner.segmentor, batches, params=params, labels="given", perturbation=shift
        )
        return {v: dr_fim(clean, shifted, coef=shift.coef, variant=v) for v in ("F", "dF", "DRF")}

    start = time.perf_counter()
    ref = reference(reference_data)
    half = len(reference_data) // 2
    ref_a, ref_b = reference(reference_data[:half]), reference(reference_data[half:])
    print(f"reference ({args.reference_batches} batches): {time.perf_counter() - start:.1f} s")

    rows = [
        "| scores | steps per fit | vs reference: Spearman / top-5% overlap "
        "| split-half: Spearman / top-5% overlap |",
        "|---|---|---|---|",
    ]
    for variant in ("F", "dF", "DRF"):
        rows.append(
            _row(
                f"reference {variant} ({half} vs {half} batches)",
                "-",
                tuner.agreement(ref_a[variant], ref_b[variant]),
                None,
            )
        )
    settings = [
        ("stable", {"estimator": "variational"}, cfg.variational_steps),
        ("stable", {"estimator": "variational"}, len(estimation)),
        ("diagonal", {"estimator": "diagonal", "labels": "given"}, len(estimation)),
    ]
    for label, options, steps in settings:
        for variant in ("F", "dF", "DRF"):
            tuner.config.variant = variant
            tuner.config.estimator = options["estimator"]
            tuner.config.labels = options.get("labels")
            tuner.config.variational_steps = steps
            tuner.config.diagnostics = False
            start = time.perf_counter()
            scores, quality = tuner.compute_scores(estimation, params)
            seconds = time.perf_counter() - start
            name = f"{label} {variant} ({len(estimation)} batches, {seconds:.0f} s)"
            rows.append(
                _row(
                    name,
                    str(steps) if label == "stable" else "-",
                    tuner.agreement(scores, ref[variant]),
                    quality.reliability.get(variant),
                )
            )
    print("\n".join(rows))


if __name__ == "__main__":
    main()
