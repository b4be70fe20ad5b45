"""Per-image segmentation losses and label sampling for Fisher estimation (method.md §3)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from fishertune.label_space import IGNORE_INDEX


def per_image_loss(logits: Tensor, targets: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Per-sample negative log-likelihood ℓ_i, the mean over the sample's valid pixels.

    ``logits`` is ``(B, K)`` or ``(B, K, *spatial)``; ``targets`` is ``(B,)`` or
    ``(B, *spatial)`` with class indices. Pixels equal to ``ignore_index`` are excluded from
    each image's mean (method.md §3); an image without any valid pixel has ℓ_i = 0.
    Returns a ``(B,)`` tensor.
    """
    if logits.dim() < 2:
        raise ValueError(f"logits must be (B, K, ...), got shape {tuple(logits.shape)}")
    expected = (logits.shape[0], *logits.shape[2:])
    if tuple(targets.shape) != expected:
        raise ValueError(
            f"targets must have shape {expected} to match logits {tuple(logits.shape)}, "
            f"got {tuple(targets.shape)}"
        )
    valid = targets != ignore_index
    safe_targets = torch.where(valid, targets, torch.zeros_like(targets))
    nll = F.cross_entropy(logits.float(), safe_targets.long(), reduction="none")
    nll = nll * valid
    if nll.dim() == 1:
        return nll
    dims = tuple(range(1, nll.dim()))
    count = valid.sum(dim=dims).clamp_min(1)
    return nll.sum(dim=dims) / count


def sample_labels(
    logits: Tensor,
    generator: torch.Generator | None = None,
    *,
    targets: Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    share: tuple[int, int] | None = None,
) -> Tensor:
    """Draw one label per pixel from ``softmax(logits)`` along dim 1 (the true Fisher, Eq. 9).

    The draw is detached from the graph and reproducible for a seeded ``generator`` (uniform
    numbers are drawn on the generator's device, then moved). Where ``targets`` is given, its
    ``ignore_index`` pixels stay ignored in the sampled map, so the sampled and the empirical
    Fisher cover the same pixels. ``share`` = ``(total, first)``: these samples are rows
    ``first …`` of a batch of ``total`` spread over processes; the uniform numbers of the
    whole batch are drawn and these rows taken, so the labels are those one process with the
    whole batch would draw.
    """
    expected = (logits.shape[0], *logits.shape[2:])
    if targets is not None and tuple(targets.shape) != expected:
        raise ValueError(
            f"labels='sampled': the targets (shape {tuple(targets.shape)}) mark the ignored "
            f"positions and must have the logits' batch and spatial shape {expected}; give "
            "estimation batches without targets or use labels='given'"
        )
    probs = torch.softmax(logits.detach().float(), dim=1).movedim(1, -1)
    gen_device = generator.device if generator is not None else probs.device
    rows = probs.shape[0]
    total, first = share if share is not None else (rows, 0)
    u = torch.rand((total, *probs.shape[1:-1]), generator=generator, device=gen_device)
    u = u[first : first + rows].to(probs.device)
    cdf = probs.cumsum(dim=-1)
    labels = (cdf < u.unsqueeze(-1)).sum(dim=-1).clamp_max(probs.shape[-1] - 1)
    if targets is not None:
        labels = torch.where(targets == ignore_index, targets.to(labels.dtype), labels)
    return labels


class ModelOutputError(LookupError):
    """A model's output lacks what the chosen loss needs (its ``logits`` or its ``loss``); not
    a ``TypeError``, so that it is never mistaken for a model ``vmap`` cannot run."""


def _field(outputs: Any, name: str) -> Any:
    """``outputs.name`` or ``outputs[name]`` (a Hugging Face ``ModelOutput`` or a dict), or None."""
    if isinstance(outputs, Mapping):
        return outputs.get(name)
    return getattr(outputs, name, None)


def class_logits(outputs: Any) -> Tensor:
    """The class logits of a model's output: the output itself when it is a tensor, else its
    ``logits`` (a Hugging Face ``ModelOutput`` or a dict)."""
    if isinstance(outputs, Tensor):
        return outputs
    logits = _field(outputs, "logits")
    if not isinstance(logits, Tensor):
        raise ModelOutputError(
            f"the model's output ({type(outputs).__name__}) is neither a tensor of class logits "
            "nor has 'logits'; pass a loss_fn(outputs, targets) returning per-sample losses"
        )
    return logits


def model_loss(outputs: Any) -> Tensor:
    """The loss a model computed itself from the batch's labels (``ModelOutput.loss``)."""
    loss = _field(outputs, "loss")
    if not isinstance(loss, Tensor):
        raise ModelOutputError(
            f"the model's output ({type(outputs).__name__}) has no 'loss': a dict batch scored "
            "with labels='given' and no loss_fn uses the model's own loss (Hugging Face models "
            "return one when the batch has 'labels'); pass a loss_fn otherwise"
        )
    return loss
