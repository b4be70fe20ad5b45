"""Shared pieces of the benchmark scripts: a small ViT segmenter and a timer."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import timm
import torch
from torch import Tensor, nn


class ViTSegmenter(nn.Module):
    """A timm DINOv2-architecture ViT with a linear per-patch classifier (logits B, K, h, w)."""

    def __init__(self, img_size: int, depth: int, dim: int, heads: int, classes: int) -> None:
        super().__init__()
        self.backbone = timm.create_model(
            "vit_small_patch14_dinov2",
            pretrained=False,
            img_size=img_size,
            depth=depth,
            embed_dim=dim,
            num_heads=heads,
            num_classes=0,
        )
        self.head = nn.Linear(dim, classes)
        self.classes = classes

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.backbone.forward_features(x)[:, self.backbone.num_prefix_tokens :]
        side = x.shape[-1] // 14
        return self.head(tokens).transpose(1, 2).reshape(x.shape[0], self.classes, side, side)


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def segmentation_batch(batch: int, img_size: int, classes: int) -> tuple[Tensor, Tensor]:
    """Random images and per-patch labels for a ViT with patch size 14."""
    side = img_size // 14
    return torch.randn(batch, 3, img_size, img_size), torch.randint(0, classes, (batch, side, side))
