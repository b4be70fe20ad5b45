"""Brute-force references for the estimators: plain autograd, one sample at a time."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def image_nll(logits: Tensor, target: Tensor, ignore_index: int = 255) -> Tensor:
    """Mean NLL over one image's valid pixels, written independently of the package."""
    logp = F.log_softmax(logits, dim=0)
    valid = target != ignore_index
    if not bool(valid.any()):
        return logits.sum() * 0.0
    picked = logp.gather(0, target.clamp_min(0).clamp_max(logits.shape[0] - 1).unsqueeze(0))
    return -(picked.squeeze(0)[valid]).mean()


def looped_fisher(
    model: nn.Module,
    batches: Sequence[tuple[Tensor, Tensor]],
    params: Mapping[str, nn.Parameter],
    *,
    batched_forward: bool = False,
) -> dict[str, Tensor]:
    """(1/N) Σ_i (∂ℓ_i/∂θ)² with ``loss.backward()`` per sample on the real module.

    ``batched_forward`` runs each whole batch once and differentiates every sample's loss
    separately (valid when samples do not interact, e.g. the detached DSU perturbation).
    """
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    sums = {k: torch.zeros_like(p) for k, p in params.items()}
    count = 0
    model.eval()
    for x, y in batches:
        if batched_forward:
            logits = model(x)
        for i in range(x.shape[0]):
            if not batched_forward:
                logits = model(x[i : i + 1])
                loss = image_nll(logits[0], y[i])
            else:
                loss = image_nll(logits[i], y[i])
            grads = torch.autograd.grad(
                loss, list(params.values()), retain_graph=batched_forward, allow_unused=True
            )
            for k, g in zip(params, grads, strict=True):
                if g is not None:
                    sums[k] += g.square()
            count += 1
    for n, p in model.named_parameters():
        p.requires_grad_(flags[n])
    return {k: s / count for k, s in sums.items()}


def squared_batch_gradient(
    model: nn.Module,
    batches: Sequence[tuple[Tensor, Tensor]],
    params: Mapping[str, nn.Parameter],
) -> dict[str, Tensor]:
    """Σ_j B_j (∇ mean_i ℓ_i over batch j)² / Σ_j B_j, with plain autograd."""
    model.eval()
    sums = {k: torch.zeros_like(p) for k, p in params.items()}
    count = 0
    for x, y in batches:
        logits = model(x)
        loss = torch.stack([image_nll(logits[i], y[i]) for i in range(x.shape[0])]).mean()
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        for k, g in zip(params, grads, strict=True):
            if g is not None:
                sums[k] += x.shape[0] * g.square()
        count += x.shape[0]
    return {k: s / count for k, s in sums.items()}
