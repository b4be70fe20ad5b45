"""Tiny run configurations on the embedded benchmark, for trainer and command-line tests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fishertune.engine.config import RunConfig, load_config

TINY_MODEL = [
    "model.backbone=vit_small_patch16_224",
    "model.head=linear",
    "model.img_size=[32, 64]",
    "model.patch_size=8",
    "model.pretrained=false",
    "model.options={depth: 4, embed_dim: 32, num_heads: 2}",
]
TINY_DATA = [
    "data.source=synthetic",
    "data.targets=[fog, night]",
    "data.synthetic_size=[32, 64]",
    "data.crop=[32, 64]",
    "data.batch_size=2",
    "data.workers=0",
    "data.train_images=12",
    "data.eval_images=4",
    "evaluation.protocol=synthetic",
    "evaluation.mode=whole",
]
FISHERTUNE_OPTIONS = (
    "method.options={estimator: diagonal, fraction: 0.05, min_fraction: 0.01, refresh_every: 2}"
)


def tiny_config(run_dir: Path, method: str = "fishertune", extra: Sequence[str] = ()) -> RunConfig:
    """A run of a 4-block, 32-wide ViT on 32×64 synthetic scenes: 3 warm-up, 2 estimation
    and 5 tuning steps, evaluated every 4 steps and checkpointed every 2."""
    options = [FISHERTUNE_OPTIONS] if method == "fishertune" else []
    return load_config(
        overrides=[
            *TINY_MODEL,
            *TINY_DATA,
            f"method.name={method}",
            *options,
            "schedule.warmup_steps=3",
            "schedule.estimate_steps=2",
            "schedule.tune_steps=5",
            "schedule.eval_every=4",
            "schedule.checkpoint_every=2",
            f"output.run_dir={run_dir}",
            *extra,
        ]
    )
