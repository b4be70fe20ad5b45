"""Per-image segmentation losses and label sampling for Fisher estimation (method.md §3)."""

from __future__ import annotations

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
) -> Tensor:
    """Draw one label per pixel from ``softmax(logits)`` along dim 1 (the true Fisher, Eq. 9).

    The draw is detached from the graph and reproducible for a seeded ``generator`` (uniform
    numbers are drawn on the generator's device, then moved). Where ``targets`` is given, its
    ``ignore_index`` pixels stay ignored in the sampled map, so the sampled and the empirical
    Fisher cover the same pixels.
    """
    probs = torch.softmax(logits.detach().float(), dim=1).movedim(1, -1)
    gen_device = generator.device if generator is not None else probs.device
    u = torch.rand(probs.shape[:-1], generator=generator, device=gen_device).to(probs.device)
    cdf = probs.cumsum(dim=-1)
    labels = (cdf < u.unsqueeze(-1)).sum(dim=-1).clamp_max(probs.shape[-1] - 1)
    if targets is not None:
        labels = torch.where(targets == ignore_index, targets.to(labels.dtype), labels)
    return labels
