"""Diagonal Fisher information from per-sample gradients (paper Eqs. 4, 8, 9; method.md §3)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from fishertune.label_space import IGNORE_INDEX
from fishertune.progress import track
from fishertune.sensitivity._common import (
    LossFn,
    all_reduce_sum,
    check_labels,
    eval_mode,
    resolve_params,
    uses_model_loss,
)
from fishertune.sensitivity.model_inputs import unpack_batch
from fishertune.sensitivity.per_sample import METHODS, PerSampleGrads, accumulation_dtype
from fishertune.sensitivity.perturbation import FeaturePerturbation


def diagonal_fisher(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    params: Mapping[str, Tensor] | None = None,
    labels: str = "sampled",
    ignore_index: int = IGNORE_INDEX,
    perturbation: FeaturePerturbation | None = None,
    generator: torch.Generator | None = None,
    num_label_samples: int = 1,
    loss_fn: LossFn | None = None,
    method: str = "auto",
    chunk_size: int | None = None,
    max_chunk_elements: int = 2**27,
    progress: bool = False,
    across_processes: bool = False,
) -> dict[str, Tensor]:
    """Diagonal Fisher F_n = (1/N) Σ_i (∂ℓ_i/∂θ_n)² over all N samples of ``batches``.

    Paper Eqs. 8–9, method.md §3. ``model(inputs)`` returns logits ``(B, K)`` or
    ``(B, K, H, W)`` (or an output with ``logits``); each item of ``batches`` is
    ``(inputs, targets)`` with long targets ``(B,)`` / ``(B, H, W)``, ``inputs`` a tensor or a
    dict of keyword tensors, or a dict batch (:mod:`~fishertune.sensitivity.model_inputs`).
    ℓ_i is the mean negative log-likelihood over sample i's pixels that are not
    ``ignore_index``, or ``loss_fn(outputs, targets)[i]`` when given, or, for a dict batch with
    ``labels`` scored ``"given"`` without ``loss_fn``, the model's own loss of sample i alone
    (a Hugging Face ``ModelOutput.loss``).

    Label modes:
        ``"sampled"``: the true Fisher (Eq. 9): labels drawn per pixel from the model's
            detached softmax with ``generator``, ``num_label_samples`` draws averaged; pixels
            whose given target is ``ignore_index`` stay excluded (targets may be ``None``).
        ``"given"``: the empirical Fisher with the ground-truth labels.
        ``"batch"``: the cheap, biased mode: the squared gradient of each mini-batch's mean
            loss, averaged over batches weighted by their size (equals ``"given"`` only at
            batch size 1).

    Only the tensors in ``params`` (name → parameter of ``model``; default: all parameters
    with ``requires_grad``) are differentiated; everything else is a constant, whether or not
    it requires grad. The model runs in eval mode (restored afterwards). Per-sample gradients
    (:class:`~fishertune.sensitivity.per_sample.PerSampleGrads`): when every scored tensor
    belongs to an ``nn.Linear``, from hooks on the layers' inputs and output gradients, a batch
    at a time, with at most ``max_chunk_elements`` per-sample values held per layer
    (``"linear"``); otherwise with ``torch.func`` (``functional_call`` + ``vmap`` + ``grad``) in
    chunks of ``chunk_size`` samples (default: as many as keep ``chunk × scored elements``
    below ``max_chunk_elements``); ``method="auto"`` picks the first that applies and falls
    back, with a logged warning, to a per-sample loop when the model cannot be vmapped
    (``"linear"`` / ``"vmap"`` / ``"loop"`` force one).

    With ``perturbation`` (method.md §4) the Fisher is taken under the simulated domain shift:
    each batch first runs once without gradients to draw the perturbation for the whole batch
    (and the sampled labels), then every sample is replayed under its own draw.

    Under ``torch.distributed`` the sums and sample counts are all-reduced, so every rank
    returns the Fisher of the union of all ranks' samples; with ``across_processes`` (every
    rank iterating batches in step, as the staged trainer does) the i-th batches of all ranks
    form one batch whose sampled labels are drawn as one process would draw them.
    ``progress`` shows a bar over the batches.

    Returns name → tensor of the parameter's shape (float32, or float64 for float64 params).
    """
    check_labels(labels)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if num_label_samples < 1:
        raise ValueError(f"num_label_samples must be >= 1, got {num_label_samples}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    names = resolve_params(model, params)
    own = dict(model.named_parameters())
    scored = {key: own[name] for key, name in names.items()}
    device = next(iter(scored.values())).device
    sums = {key: torch.zeros_like(p, dtype=accumulation_dtype(p)) for key, p in scored.items()}
    count = torch.zeros((), dtype=torch.float64, device=device)
    engine = PerSampleGrads(
        model,
        names,
        perturbation,
        ignore_index,
        loss_fn,
        method,
        chunk_size,
        max_chunk_elements,
        across_processes,
    )
    model_loss = uses_model_loss(labels, loss_fn)
    with eval_mode(model), perturbation if perturbation is not None else nullcontext():
        for raw in track(batches, "diagonal Fisher", enabled=progress):
            inputs, targets = unpack_batch(
                raw, device, need_targets=labels != "sampled", model_loss=model_loss
            )
            squares = engine.square_sums(
                inputs,
                targets,
                labels=labels,
                generator=generator,
                num_label_samples=num_label_samples,
            )
            for key, sq in squares.items():
                sums[key].add_(sq)
            count += inputs.size

    all_reduce_sum([*sums.values(), count])
    if count.item() == 0:
        raise ValueError("batches yielded no samples")
    return {key: s.div_(count.to(s.dtype)) for key, s in sums.items()}
