"""``fishertune demo``: FisherTune and four baselines on the embedded benchmark, offline.

The demo backbone (a small ViT pretrained on synthetic scenes of all six styles with a coarse
7-category pretext, shipped with the package, see :mod:`fishertune.models.demo_vit`) gets a
linear decoder and is fine-tuned on the labelled ``source`` style only, then evaluated on the
source validation scenes and on the five unseen styles (fog, night, rain, snow, palette).
Every method uses the same data, steps and optimiser settings; FisherTune's run also spends
its estimation stage. ``configs/demo.yaml`` holds the same settings as :data:`DEMO_SETTINGS`
(a test keeps them equal), so ``fishertune train configs/demo.yaml`` reruns one method.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fishertune.engine.config import RunConfig, config_from_dict
from fishertune.workflows.comparison import Comparison, compare

__all__ = [
    "DEMO_METHODS",
    "DEMO_SETTINGS",
    "QUICK_SETTINGS",
    "demo_config",
    "merge_settings",
    "run_demo",
]

DEMO_METHODS = ("fishertune", "full", "freeze", "rein", "lora")

DEMO_SETTINGS: dict[str, Any] = {
    "model": {
        "backbone": "fishertune_demo_vit",
        "head": "linear",
        "img_size": [64, 128],
        "pretrained": True,
        "num_classes": 19,
        "options": {"out_indices": [5]},
        "head_options": {"subpixel": 8, "level": 1},
    },
    "method": {
        "name": "fishertune",
        "options": {
            "estimator": "variational",
            "variational_steps": 25,
            "fraction": 0.05,
            "min_fraction": 0.01,
            "refresh_every": 20,
        },
    },
    "data": {
        "source": "synthetic",
        "targets": ["fog", "night", "rain", "snow", "palette"],
        "synthetic_size": [64, 128],
        "crop": [64, 128],
        "scale_range": [1.0, 2.0],
        "batch_size": 8,
        "workers": 0,
        "train_images": 2000,
        "eval_images": 200,
    },
    "schedule": {
        "warmup_steps": 80,
        "estimate_steps": 10,
        "tune_steps": 320,
        "lr": 1.0e-3,
        "decoder_lr_mult": 3.0,
        "weight_decay": 0.05,
        "poly_power": 0.9,
        "ema": 0.99,
        "eval_every": 200,
        "checkpoint_every": 100,
        "seed": 0,
    },
    "evaluation": {"protocol": "synthetic", "mode": "whole"},
    "output": {"run_dir": "runs/demo"},
}
"""The default demo: 400 weight updates per method (80 decoder warm-up + 320 tuning)."""

QUICK_SETTINGS: dict[str, dict[str, Any]] = {
    "method": {"options": {"variational_steps": 5, "refresh_every": 5}},
    "data": {"train_images": 64, "eval_images": 16},
    "schedule": {
        "warmup_steps": 5,
        "estimate_steps": 2,
        "tune_steps": 15,
        "eval_every": 0,
        "checkpoint_every": 0,
    },
    "output": {"run_dir": "runs/demo_quick"},
}
"""``--quick``: the same pipeline at a tenth of the steps and images (a smoke test)."""


def merge_settings(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of ``base`` with ``changes`` applied (nested mappings merged key by key)."""
    merged = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_settings(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def demo_config(*, quick: bool = False, out_dir: str | Path | None = None) -> RunConfig:
    """The demo's run configuration (``quick``: the smoke-test size)."""
    settings = (
        merge_settings(DEMO_SETTINGS, QUICK_SETTINGS) if quick else copy.deepcopy(DEMO_SETTINGS)
    )
    if out_dir is not None:
        settings["output"]["run_dir"] = str(out_dir)
    return config_from_dict(settings)


def run_demo(
    *,
    quick: bool = False,
    out_dir: str | Path | None = None,
    methods: Sequence[str] = DEMO_METHODS,
    seeds: Sequence[int] | None = None,
    resume: bool = False,
    progress: bool = True,
    device: str | None = None,
) -> Comparison:
    """Train and evaluate ``methods`` on the embedded benchmark (with ``seeds``: each method
    with each seed, :func:`~fishertune.workflows.comparison.compare`); write the comparison
    report."""
    config = demo_config(quick=quick, out_dir=out_dir)
    schedule = config.schedule
    notes = [
        f"Embedded benchmark: {config.data.train_images} labelled source scenes for training, "
        f"{config.data.eval_images} validation scenes per domain, "
        f"{config.data.synthetic_size[0]}×{config.data.synthetic_size[1]} px.",
        f"Every method makes {config.total_steps} weight updates with batch "
        f"{config.data.batch_size} (FisherTune: {schedule.warmup_steps} decoder warm-up + "
        f"{schedule.tune_steps} tuning steps, after {schedule.estimate_steps} estimation "
        "batches).",
        "The numbers are whatever this run measured; the benchmark was not tuned to make a "
        "chosen method win. Short runs on a small model are noisy: compare seeds before "
        "drawing conclusions.",
    ]
    return compare(
        config,
        methods,
        seeds=seeds,
        resume=resume,
        progress=progress,
        device=device,
        title="fishertune demo" + (" (quick)" if quick else ""),
        notes=notes,
    )
