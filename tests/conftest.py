"""Tiny models shared by the tests: an MLP classifier, a conv segmenter and a timm ViT segmenter."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import timm
import torch
from torch import Tensor, nn

NUM_CLASSES = 5


class ConvSegmenter(nn.Module):
    """Two convolutions with BatchNorm producing (B, K, H, W) logits."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, NUM_CLASSES, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.norm(self.stem(x))))


class ViTSegmenter(nn.Module):
    """A tiny DINOv2-architecture ViT from timm with a linear per-patch classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = timm.create_model(
            "vit_small_patch14_dinov2",
            pretrained=False,
            img_size=28,
            depth=2,
            embed_dim=32,
            num_heads=2,
            num_classes=0,
            init_values=1.0,
        )
        self.head = nn.Linear(32, NUM_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.backbone.forward_features(x)[:, self.backbone.num_prefix_tokens :]
        side = x.shape[-1] // 14
        logits = self.head(tokens).transpose(1, 2)
        return logits.reshape(x.shape[0], NUM_CLASSES, side, side)


def make_mlp() -> tuple[nn.Module, list[tuple[Tensor, Tensor]]]:
    model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, NUM_CLASSES))
    x = torch.randn(7, 6)
    y = torch.randint(0, NUM_CLASSES, (7,))
    return model, [(x[:4], y[:4]), (x[4:], y[4:])]


def make_conv() -> tuple[nn.Module, list[tuple[Tensor, Tensor]]]:
    model = ConvSegmenter()
    x = torch.randn(5, 3, 6, 6)
    y = torch.randint(0, NUM_CLASSES, (5, 6, 6))
    y[0, :3] = 255
    y[2] = 255  # an image without any valid pixel
    return model, [(x[:3], y[:3]), (x[3:], y[3:])]


def make_vit() -> tuple[nn.Module, list[tuple[Tensor, Tensor]]]:
    model = ViTSegmenter()
    x = torch.randn(5, 3, 28, 28)
    y = torch.randint(0, NUM_CLASSES, (5, 2, 2))
    y[1, 0] = 255
    return model, [(x[:3], y[:3]), (x[3:], y[3:])]


MODEL_FACTORIES: dict[str, Callable[[], tuple[nn.Module, list[tuple[Tensor, Tensor]]]]] = {
    "mlp": make_mlp,
    "conv": make_conv,
    "vit": make_vit,
}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def tiny_vit_classifier(**changes: int) -> nn.Module:
    """A tiny timm ViT classifier (5 classes, 32 px, seeded), with ``changes`` to its depth
    or width: the any-model tests' base model."""
    torch.manual_seed(0)
    shape = {"depth": 2, "embed_dim": 32, **changes}
    return timm.create_model(
        "vit_small_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        num_heads=2,
        num_classes=5,
        **shape,
    )


def tiny_hf_vit(num_labels: int = NUM_CLASSES) -> nn.Module:
    """A tiny Hugging Face ``ViTForImageClassification`` (32 px, seeded)."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=num_labels,
    )
    return ViTForImageClassification(config)


def tiny_hf_bert(num_labels: int = NUM_CLASSES) -> nn.Module:
    """A tiny Hugging Face ``BertForSequenceClassification`` (token ids in, seeded)."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=num_labels,
    )
    return BertForSequenceClassification(config)
