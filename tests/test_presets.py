"""The paper presets in configs/paper load, validate and build their model on the meta device."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fishertune.engine import load_config
from fishertune.models import build_segmentor
from fishertune.tuners import build_tuner

PRESETS = sorted((Path(__file__).resolve().parents[1] / "configs" / "paper").glob("*.yaml"))


def test_every_setting_and_backbone_has_a_preset() -> None:
    names = {path.stem for path in PRESETS}
    for source in ("gtav", "cityscapes"):
        for backbone in ("dinov2_l", "eva02_l", "clip_l", "sam_h", "mae_h"):
            assert f"{source}_{backbone}" in names


@pytest.mark.parametrize("path", PRESETS, ids=[p.stem for p in PRESETS])
def test_preset_builds_on_the_meta_device(path: Path) -> None:
    config = load_config(path)
    assert (config.data.crop, config.data.batch_size, config.total_steps) == (512, 4, 40000)
    assert config.model.head == "mask2former"
    with torch.device("meta"):
        model = build_segmentor(
            config.model.backbone.split(".")[0],
            head=config.model.head,
            img_size=config.model.img_size,
            patch_size=config.model.patch_size,
            num_classes=config.model.num_classes,
        )
        tuner = build_tuner(config.method.name, model, **config.method.options)
    total = sum(p.numel() for p in model.backbone.parameters())
    assert tuner.count().backbone == round(0.05 * total)
