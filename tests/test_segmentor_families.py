"""Every VFM family builds at a tiny size and trains through both heads (issue 3)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from fishertune.models import build_segmentor

TINY_BACKBONE = {"depth": 4, "embed_dim": 32, "num_heads": 2}
TINY_M2F = {
    "hidden_dim": 32,
    "num_queries": 4,
    "pixel_decoder_layers": 1,
    "decoder_layers": 2,
    "num_heads": 2,
    "pixel_decoder_ffn_dim": 32,
    "decoder_ffn_dim": 32,
    "train_num_points": 64,
}
FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "dinov2": ("vit_small_patch14_dinov2", {}),
    "eva02": ("eva02_large_patch14_448", {}),
    "clip": ("vit_base_patch16_clip_224", {}),
    "sam": ("samvit_base_patch16", {"global_attn_indexes": (3,), "window_size": 4}),
    "mae": ("vit_base_patch16_224.mae", {}),
}


@pytest.mark.parametrize("head", ["linear", "mask2former"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_trains_and_predicts_through_the_head(family: str, head: str) -> None:
    name, extra = FAMILIES[family]
    model = build_segmentor(
        name,
        head=head,
        num_classes=5,
        img_size=64,
        head_options=TINY_M2F if head == "mask2former" else None,
        **TINY_BACKBONE,
        **extra,
    )
    images = torch.randn(2, 3, 60, 70)  # not a multiple of the patch size
    targets = torch.randint(0, 5, (2, 60, 70))
    targets[0, :5] = 255
    losses = model(images, targets)
    assert isinstance(losses, dict)
    total = sum(losses.values())
    assert isinstance(total, torch.Tensor)
    assert bool(torch.isfinite(total))
    total.backward()
    block = model.backbone.blocks[0]
    assert all(p.grad is not None for p in block.parameters())
    model.eval()
    scores = model.predict(images)
    assert scores.shape == (2, 5, 60, 70)


def test_unknown_head() -> None:
    with pytest.raises(ValueError, match="head must be one of"):
        build_segmentor("vit_small_patch14_dinov2", head="upernet")
