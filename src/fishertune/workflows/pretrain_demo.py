"""Pretraining of the demo "foundation model" on synthetic street scenes of every style.

The FisherTune demo needs a backbone whose features already generalise across the synthetic
styles (domains) but that has never seen the 19-class task, so that fine-tuning it on the source
style alone can preserve or destroy that generalisation. :func:`pretrain_demo_backbone` makes
one: the ViT registered as :data:`~fishertune.models.demo_vit.DEMO_VIT_NAME`, trained on

* a **different pretext**: coarse segmentation into the 7 Cityscapes categories
  (:data:`PRETEXT_CATEGORIES`; ignore stays ignore, see :func:`coarse_labels`), predicted *per
  pixel* by a linear sub-pixel classifier on the final (normed) patch tokens — each token's
  vector gives the logits of its ``p × p`` pixels, rearranged by a pixel shuffle — and scored
  with cross-entropy. The 19-class labels are never used. Predicting every pixel, not one
  label per token, makes the tokens carry where inside the patch a boundary runs, which thin
  and small things (poles, signs, persons) need later; a bilinearly upsampled per-token
  pretext leaves them blurred (measured: the README's benchmark section);
* scenes of **all six styles**: scene ``i`` of the corpus is rendered in ``STYLES[i % 6]``;
* **scenes distinct from the benchmark's**: the corpus is the ``train`` split and the held-out
  set the ``val`` split of :class:`SyntheticStreets` seeded with
  ``PRETRAIN_SEED_OFFSET + seed`` (1000 + seed), while the demo benchmarks use small seeds
  (0 by default), so no evaluation scene is ever seen in pretraining;
* at 64×128 with a random horizontal flip per sample.

Masked-image modelling (reconstructing the pixels of masked tokens, added to the same loss)
was tried at equal steps and gave a backbone that fine-tuned worse on the benchmark, so the
recipe does not use it (README).

The corpus is rendered once into memory as uint8 tensors. Training is deterministic on CPU:
the model is initialised under ``torch.manual_seed(seed)`` (inside a forked RNG, so the caller's
global state is untouched) and batches and flips come from a seeded ``torch.Generator``;
AdamW with linear warm-up and cosine decay. Same arguments and thread count → bit-identical
weights. The backbone's state dict (no pretext head) is written as float16 safetensors
atomically, with a JSON sidecar holding the recipe, the metrics and the file's sha256.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

from fishertune.atomic import atomic_write
from fishertune.data.synthetic.dataset import SyntheticStreets
from fishertune.data.synthetic.styles import STYLES
from fishertune.label_space import IGNORE_INDEX
from fishertune.models.demo_vit import (
    DEMO_ARCHITECTURE,
    DEMO_IMAGE_SIZE,
    DEMO_MEAN,
    DEMO_STD,
    DEMO_VIT_NAME,
    fishertune_demo_vit,
)
from fishertune.progress import track

__all__ = [
    "CATEGORY_OF_TRAIN_ID",
    "PRETEXT_CATEGORIES",
    "PRETRAIN_SEED_OFFSET",
    "PretrainResult",
    "coarse_labels",
    "pretrain_demo_backbone",
    "render_corpus",
]

PRETEXT_CATEGORIES: tuple[str, ...] = (
    "flat",
    "construction",
    "object",
    "nature",
    "sky",
    "human",
    "vehicle",
)
"""The 7 Cityscapes categories of the pretext task, in label order."""
CATEGORY_OF_TRAIN_ID: tuple[int, ...] = (0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 4, 5, 5, 6, 6, 6, 6, 6, 6)
"""Entry ``i``: the category (index into :data:`PRETEXT_CATEGORIES`) of train id ``i``."""
PRETRAIN_SEED_OFFSET = 1000
"""Pretraining scenes come from ``SyntheticStreets(..., seed=PRETRAIN_SEED_OFFSET + seed)``."""

WEIGHT_DECAY = 0.05
WARMUP_FRACTION = 0.05
GRAD_CLIP = 1.0
LOSS_WINDOW = 20
"""The final pretext loss is the mean over the last ``LOSS_WINDOW`` steps."""
_NO_DECAY = frozenset({"backbone.pos_embed", "backbone.cls_token"})
"""Parameters of ndim ≥ 2 trained without weight decay (the position embedding and the class
token)."""

_LOOKUP = torch.full((256,), IGNORE_INDEX, dtype=torch.uint8)
_LOOKUP[: len(CATEGORY_OF_TRAIN_ID)] = torch.tensor(CATEGORY_OF_TRAIN_ID, dtype=torch.uint8)


def coarse_labels(train_ids: Tensor) -> Tensor:
    """Map Cityscapes train ids (0–18, 255 = ignore) to pretext categories (0–6, 255), uint8."""
    return _LOOKUP[train_ids.long()]


@dataclass(frozen=True)
class PretrainResult:
    """What :func:`pretrain_demo_backbone` produced and measured."""

    path: Path
    """The float16 safetensors file written (its JSON sidecar sits next to it)."""
    final_loss: float
    """Mean pretext cross-entropy over the last training steps."""
    pixel_accuracy: float
    """Pretext pixel accuracy on the held-out scenes, all styles pooled."""
    style_accuracy: dict[str, float]
    """Pretext pixel accuracy on the held-out scenes, per style."""
    elapsed_seconds: float
    """Wall-clock time of the whole recipe (rendering, training, evaluation, writing)."""
    recipe: dict[str, Any]
    """Every argument, the architecture, the pretext and the data (the sidecar's ``recipe``)."""


class _PretextModel(nn.Module):
    """The demo ViT with a linear per-patch classifier over the pretext categories."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = fishertune_demo_vit()
        patch = DEMO_ARCHITECTURE["patch_size"]
        self.head = nn.Linear(self.backbone.embed_dim, len(PRETEXT_CATEGORIES) * patch**2)
        self.register_buffer("mean", torch.tensor(DEMO_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(DEMO_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        """Logits ``(B, 7, H, W)`` for uint8 images ``(B, 3, H, W)``."""
        height, width = images.shape[-2:]
        x = (images.float() / 255 - self.get_buffer("mean")) / self.get_buffer("std")
        tokens = self.backbone.forward_features(x)[:, self.backbone.num_prefix_tokens :]
        patch = DEMO_ARCHITECTURE["patch_size"]
        logits = self.head(tokens).transpose(1, 2)
        logits = logits.reshape(len(images), -1, height // patch, width // patch)
        return F.pixel_shuffle(logits, patch)


def render_corpus(
    split: str, scenes: int, seed: int, *, cycle: bool, progress: bool
) -> tuple[Tensor, Tensor, list[str]]:
    """Render pretraining scenes at :data:`DEMO_IMAGE_SIZE` into memory.

    Scenes ``0 … scenes − 1`` of ``split`` of ``SyntheticStreets`` seeded with
    ``PRETRAIN_SEED_OFFSET + seed``. With ``cycle``, scene ``i`` is rendered once, in
    ``STYLES[i % 6]`` (the training corpus); otherwise every scene is rendered in every style,
    style by style (the held-out set). Returns uint8
    images ``(N, 3, H, W)``, uint8 pretext labels ``(N, H, W)`` and each item's style.
    """
    sets = {
        style: SyntheticStreets(
            split, style, size=DEMO_IMAGE_SIZE, length=scenes, seed=PRETRAIN_SEED_OFFSET + seed
        )
        for style in STYLES
    }
    items = (
        [(STYLES[i % len(STYLES)], i) for i in range(scenes)]
        if cycle
        else [(style, i) for style in STYLES for i in range(scenes)]
    )
    images = torch.empty((len(items), 3, *DEMO_IMAGE_SIZE), dtype=torch.uint8)
    labels = torch.empty((len(items), *DEMO_IMAGE_SIZE), dtype=torch.uint8)
    for n, (style, i) in enumerate(track(items, f"rendering {split} scenes", enabled=progress)):
        images[n], train_ids = sets[style][i]
        labels[n] = coarse_labels(train_ids)
    return images, labels, [style for style, _ in items]


def _batches(size: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Endless batches of indices: one seeded permutation of ``range(size)`` per epoch."""
    while True:
        order = torch.randperm(size, generator=generator)
        for start in range(0, size, batch_size):
            yield order[start : start + batch_size]


def _cosine(steps: int, warmup: int) -> Callable[[int], float]:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then cosine decay to 0."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return factor


@torch.no_grad()
def _accuracy(
    model: _PretextModel, images: Tensor, labels: Tensor, styles: list[str], batch_size: int
) -> dict[str, float]:
    """Pixel accuracy over non-ignored pixels, per style and pooled (key ``"all"``)."""
    model.eval()
    correct: dict[str, int] = dict.fromkeys(styles, 0)
    total: dict[str, int] = dict.fromkeys(styles, 0)
    for start in range(0, len(images), batch_size):
        predicted = model(images[start : start + batch_size]).argmax(1)
        for offset, truth in enumerate(labels[start : start + batch_size].long()):
            valid = truth != IGNORE_INDEX
            style = styles[start + offset]
            correct[style] += int((predicted[offset][valid] == truth[valid]).sum())
            total[style] += int(valid.sum())
    accuracy = {style: correct[style] / max(1, total[style]) for style in correct}
    accuracy["all"] = sum(correct.values()) / max(1, sum(total.values()))
    return accuracy


def pretrain_demo_backbone(
    output: str | Path,
    *,
    steps: int = 8000,
    batch_size: int = 16,
    corpus_size: int = 6000,
    lr: float = 1e-3,
    seed: int = 0,
    eval_scenes: int = 16,
    progress: bool = True,
) -> PretrainResult:
    """Pretrain the demo ViT on the coarse-category pretext and write its weights to ``output``.

    Args:
        output: the float16 safetensors file to write (the sidecar is ``output`` with ``.json``).
        steps: optimisation steps.
        batch_size: images per step.
        corpus_size: training scenes rendered (each in one style, cycling through all six).
        lr: peak AdamW learning rate (weight decay 0.05 on weight matrices, 5 % warm-up,
            cosine decay, gradient norm clipped at 1).
        seed: seeds the model initialisation, the batch order and flips, and the scenes
            (``SyntheticStreets`` seed ``1000 + seed``).
        eval_scenes: held-out scenes, each rendered in all six styles for the accuracy.
        progress: show progress bars.

    Uses the caller's ``torch.set_num_threads``. With the defaults a step costs ≈ 0.25 s on 2
    idle CPU cores (≈ 35 minutes in all, the README gives the measured time); sharing those
    cores with another job can take 4× longer.
    """
    if min(steps, batch_size, corpus_size, eval_scenes) < 1:
        raise ValueError("steps, batch_size, corpus_size and eval_scenes must be positive")
    started = time.perf_counter()
    output = Path(output)
    warmup = max(1, round(WARMUP_FRACTION * steps))
    recipe: dict[str, Any] = {
        "model": DEMO_VIT_NAME,
        "architecture": {**DEMO_ARCHITECTURE, "img_size": list(DEMO_IMAGE_SIZE)},
        "pretext": {
            "task": "coarse semantic segmentation into the 7 Cityscapes categories",
            "categories": list(PRETEXT_CATEGORIES),
            "category_of_train_id": list(CATEGORY_OF_TRAIN_ID),
            "head": "linear sub-pixel classifier on the final normed patch tokens "
            "(each token gives its patch's pixel logits, pixel shuffle)",
            "loss": f"cross-entropy, ignore index {IGNORE_INDEX}",
        },
        "data": {
            "dataset": "SyntheticStreets",
            "image_size": list(DEMO_IMAGE_SIZE),
            "scene_seed": PRETRAIN_SEED_OFFSET + seed,
            "train_split": "train",
            "styles": list(STYLES),
            "style_of_scene": "STYLES[i % 6]",
            "eval_split": "val",
            "augmentation": "random horizontal flip, p = 0.5",
        },
        "optimizer": {
            "name": "AdamW",
            "betas": [0.9, 0.999],
            "weight_decay": WEIGHT_DECAY,
            "schedule": "linear warm-up then cosine to 0",
            "warmup_steps": warmup,
            "grad_clip_norm": GRAD_CLIP,
        },
        "steps": steps,
        "batch_size": batch_size,
        "corpus_size": corpus_size,
        "lr": lr,
        "seed": seed,
        "eval_scenes": eval_scenes,
        "threads": torch.get_num_threads(),
    }
    images, labels, _ = render_corpus("train", corpus_size, seed, cycle=True, progress=progress)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _PretextModel()
    decay: dict[bool, list[nn.Parameter]] = {True: [], False: []}
    for name, param in model.named_parameters():
        decay[param.ndim >= 2 and name not in _NO_DECAY].append(param)
    optimizer = torch.optim.AdamW(
        [
            {"params": decay[True], "weight_decay": WEIGHT_DECAY},
            {"params": decay[False], "weight_decay": 0.0},
        ],
        lr=lr,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine(steps, warmup))
    generator = torch.Generator().manual_seed(seed)
    batches = _batches(corpus_size, batch_size, generator)
    losses: list[float] = []
    model.train()
    for _ in track(range(steps), "pretraining the demo ViT", enabled=progress):
        index = next(batches)
        flip = (torch.rand(len(index), generator=generator) < 0.5).view(-1, 1, 1)
        batch_labels = torch.where(flip, labels[index].flip(-1), labels[index]).long()
        batch_images = torch.where(flip[:, None], images[index].flip(-1), images[index])
        loss = F.cross_entropy(model(batch_images), batch_labels, ignore_index=IGNORE_INDEX)
        optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
    eval_images, eval_labels, eval_styles = render_corpus(
        "val", eval_scenes, seed, cycle=False, progress=progress
    )
    accuracy = _accuracy(model, eval_images, eval_labels, eval_styles, batch_size=32)
    final_loss = sum(losses[-LOSS_WINDOW:]) / len(losses[-LOSS_WINDOW:])

    state = {k: v.detach().half().contiguous() for k, v in model.backbone.state_dict().items()}
    atomic_write(output, lambda path: save_file(state, str(path), metadata={"format": "pt"}))
    digest = hashlib.sha256(output.read_bytes()).hexdigest()
    elapsed = time.perf_counter() - started
    style_accuracy = {style: accuracy[style] for style in STYLES}
    sidecar = {
        "recipe": recipe,
        "metrics": {
            "final_loss": final_loss,
            "pixel_accuracy": accuracy["all"],
            "style_accuracy": style_accuracy,
            "elapsed_seconds": elapsed,
        },
        "sha256": digest,
        "torch_version": torch.__version__,
        "timm_version": timm.__version__,
    }
    text = json.dumps(sidecar, indent=2) + "\n"
    atomic_write(output.with_suffix(".json"), lambda path: path.write_text(text))
    return PretrainResult(
        path=output,
        final_loss=final_loss,
        pixel_accuracy=accuracy["all"],
        style_accuracy=style_accuracy,
        elapsed_seconds=elapsed,
        recipe=recipe,
    )
