"""Shared checks for the tuners: a tiny segmentor, training, bit-identity and save/load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from fishertune.models import Segmentor, build_segmentor
from fishertune.tuners import Tuner, build_tuner

NUM_CLASSES = 5
TINY_M2F = {
    "hidden_dim": 32,
    "num_queries": 6,
    "pixel_decoder_layers": 1,
    "decoder_layers": 2,
    "num_heads": 2,
    "pixel_decoder_ffn_dim": 32,
    "decoder_ffn_dim": 32,
    "train_num_points": 64,
}


def tiny_segmentor(head: str = "linear", seed: int = 0, **backbone: Any) -> Segmentor:
    """A DINOv2-architecture ViT (4 blocks × 32 channels) with a tiny head, fixed seed."""
    torch.manual_seed(seed)
    options: dict[str, Any] = {"depth": 4, "embed_dim": 32, "num_heads": 2, **backbone}
    name = options.pop("name", "vit_small_patch14_dinov2")
    return build_segmentor(
        name,
        head=head,
        num_classes=NUM_CLASSES,
        img_size=56,
        head_options=TINY_M2F if head == "mask2former" else None,
        **options,
    )


def tiny_sam_segmentor(window_size: int = 4) -> Segmentor:
    """A tiny SAM-architecture ViT (windowed blocks on (B, H, W, C) maps), linear head."""
    torch.manual_seed(0)
    return build_segmentor(
        "samvit_base_patch16",
        num_classes=NUM_CLASSES,
        img_size=64,
        depth=4,
        embed_dim=32,
        num_heads=2,
        global_attn_indexes=(3,),
        window_size=window_size,
    )


def batch(seed: int = 1, size: int = 56, count: int = 2) -> tuple[Tensor, Tensor]:
    """Fixed images and labels with a few ignored pixels."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(count, 3, size, size, generator=g)
    labels = torch.randint(0, NUM_CLASSES, (count, size, size), generator=g)
    labels[:, :4] = 255
    return images, labels


def train_steps(tuner: Tuner, steps: int = 8, lr: float = 1e-3) -> list[float]:
    """Optimise the tuned segmentor on one fixed batch; returns the losses."""
    model = tuner.segmentor
    optimizer = tuner.make_optimizer(lr=lr, weight_decay=0.01)
    images, labels = batch()
    model.train()
    losses = []
    for step in range(steps):
        tuner.on_step(step, steps)
        with tuner.train_context():
            out = model(images, labels)
        assert isinstance(out, dict)
        loss = sum(out.values())
        assert isinstance(loss, Tensor)
        optimizer.zero_grad()
        loss.backward()
        tuner.after_backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def frozen_snapshot(model: Segmentor) -> dict[str, Tensor]:
    """Copies of every backbone parameter that does not require grad."""
    return {
        name: p.detach().clone()
        for name, p in model.backbone.named_parameters(prefix="backbone")
        if not p.requires_grad
    }


def assert_frozen_unchanged(model: Segmentor, snapshot: dict[str, Tensor]) -> None:
    params = dict(model.named_parameters())
    for name, before in snapshot.items():
        assert torch.equal(params[name].detach(), before), f"{name} changed"


def prepared(tuner: Tuner) -> Tuner:
    """``tuner`` ready to train: a method with an estimation stage estimates on two batches."""
    if tuner.estimates and not tuner.has_scores:
        tuner.estimate([batch(seed=5), batch(seed=6)])
    return tuner


def check_trains_and_keeps_the_rest(name: str, head: str = "linear", **options: Any) -> Tuner:
    """A few steps lower the loss; every backbone tensor outside the trainable set is intact."""
    model = tiny_segmentor(head)
    tuner = prepared(build_tuner(name, model, **options))
    snapshot = frozen_snapshot(model)
    losses = train_steps(tuner)
    assert sum(losses[-2:]) < sum(losses[:2]), losses
    assert_frozen_unchanged(model, snapshot)
    return tuner


def check_save_load(name: str, tmp_path: Path, head: str = "linear", **options: Any) -> Path:
    """Saving the tuned state and loading it into a fresh segmentor reproduces predictions."""
    model = tiny_segmentor(head)
    tuner = prepared(build_tuner(name, model, **options))
    train_steps(tuner, steps=3)
    path = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in tuner.saved_state().items()}, str(path))
    fresh = tiny_segmentor(head)
    fresh_tuner = build_tuner(name, fresh, **options)
    fresh_tuner.load_saved(load_file(str(path)))
    images, _ = batch(seed=3)
    model.eval()
    fresh.eval()
    assert torch.equal(model.predict(images), fresh.predict(images))
    return path
