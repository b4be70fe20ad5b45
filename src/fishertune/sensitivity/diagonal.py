"""Diagonal Fisher information from per-sample gradients (paper Eqs. 4, 8, 9; method.md §3)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from fishertune.progress import track
from fishertune.sensitivity._common import (
    LossFn,
    all_reduce_sum,
    check_labels,
    constant_tensors,
    eval_mode,
    resolve_params,
    sample_losses,
    unpack_batch,
)
from fishertune.sensitivity.losses import sample_labels
from fishertune.sensitivity.perturbation import FeaturePerturbation, Offsets

logger = logging.getLogger(__name__)

METHODS = ("auto", "vmap", "loop")
_VMAP_FAILURES = (RuntimeError, NotImplementedError, ValueError, TypeError)


def diagonal_fisher(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    params: Mapping[str, Tensor] | None = None,
    labels: str = "sampled",
    ignore_index: int = 255,
    perturbation: FeaturePerturbation | None = None,
    generator: torch.Generator | None = None,
    num_label_samples: int = 1,
    loss_fn: LossFn | None = None,
    method: str = "auto",
    chunk_size: int | None = None,
    max_chunk_elements: int = 2**27,
    progress: bool = False,
) -> dict[str, Tensor]:
    """Diagonal Fisher F_n = (1/N) Σ_i (∂ℓ_i/∂θ_n)² over all N samples of ``batches``.

    Paper Eqs. 8–9, method.md §3. ``model(inputs)`` returns logits ``(B, K)`` or
    ``(B, K, H, W)``; each item of ``batches`` is ``(inputs, targets)`` with long targets
    ``(B,)`` / ``(B, H, W)``. ℓ_i is the mean negative log-likelihood over sample i's pixels
    that are not ``ignore_index`` (or ``loss_fn(outputs, targets)[i]`` when given).

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
    are computed with ``torch.func`` (``functional_call`` + ``vmap`` + ``grad``) in chunks of
    ``chunk_size`` samples (default: as many as keep ``chunk × scored elements`` below
    ``max_chunk_elements``); ``method="auto"`` falls back, with a logged warning, to a
    per-sample loop when the model cannot be vmapped (``"vmap"`` / ``"loop"`` force one).

    With ``perturbation`` (method.md §4) the Fisher is taken under the simulated domain shift:
    each batch first runs once without gradients to draw the perturbation for the whole batch
    (and the sampled labels), then every sample is replayed under its own draw.

    Under ``torch.distributed`` the sums and sample counts are all-reduced, so every rank
    returns the Fisher of the union of all ranks' samples. ``progress`` shows a bar over the
    batches.

    Returns name → tensor of the parameter's shape (float32, or float64 for float64 params).
    """
    check_labels(labels, loss_fn)
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
    elements = sum(p.numel() for p in scored.values())
    chunk = chunk_size or max(1, max_chunk_elements // max(elements, 1))
    sums = {key: torch.zeros_like(p, dtype=_acc_dtype(p)) for key, p in scored.items()}
    count = torch.zeros((), dtype=torch.float64, device=device)
    engine = _PerSampleGrads(model, names, perturbation, ignore_index, loss_fn, method)

    with eval_mode(model), perturbation if perturbation is not None else nullcontext():
        for raw in track(batches, "diagonal Fisher", enabled=progress):
            inputs, targets = unpack_batch(raw, device, need_targets=labels != "sampled")
            size = inputs.shape[0]
            if labels == "batch":
                assert targets is not None
                for key, g in engine.batch_gradient(inputs, targets).items():
                    sums[key].add_(g.to(sums[key].dtype).square(), alpha=size)
                count += size
                continue
            offsets: list[Offsets] = []
            draws: list[Tensor] = []
            if perturbation is not None or labels == "sampled":
                with torch.no_grad(), _recording(perturbation) as recorded:
                    logits = model(inputs)
                offsets = list(recorded)
                if labels == "sampled":
                    draws = [
                        sample_labels(logits, generator, targets=targets, ignore_index=ignore_index)
                        for _ in range(num_label_samples)
                    ]
            if labels == "given":
                assert targets is not None
                draws = [targets]
            for drawn in draws:
                for start in range(0, size, chunk):
                    part = slice(start, start + chunk)
                    squares = engine.squared_grads(
                        inputs[part], drawn[part], [(a[part], b[part]) for a, b in offsets]
                    )
                    for key, sq in squares.items():
                        sums[key].add_(sq, alpha=1.0 / len(draws))
            count += size

    all_reduce_sum([*sums.values(), count])
    if count.item() == 0:
        raise ValueError("batches yielded no samples")
    return {key: s.div_(count.to(s.dtype)) for key, s in sums.items()}


def _recording(perturbation: FeaturePerturbation | None) -> AbstractContextManager[list[Offsets]]:
    """Record the perturbation's draws for a batch (an empty list without perturbation)."""
    if perturbation is None:
        return nullcontext([])
    return perturbation.record_offsets()


def _acc_dtype(p: Tensor) -> torch.dtype:
    return torch.float64 if p.dtype == torch.float64 else torch.float32


class _PerSampleGrads:
    """Per-sample and batch gradients of the scored parameters, everything else constant."""

    def __init__(
        self,
        model: nn.Module,
        names: Mapping[str, str],
        perturbation: FeaturePerturbation | None,
        ignore_index: int,
        loss_fn: LossFn | None,
        method: str,
    ) -> None:
        self.model = model
        self.names = dict(names)
        self.perturbation = perturbation
        self.ignore_index = ignore_index
        self.loss_fn = loss_fn
        self.use_vmap = method != "loop"
        self.fallback = method == "auto"
        own = dict(model.named_parameters())
        self.scored = {name: own[name].detach() for name in self.names.values()}
        self.consts = constant_tensors(model, self.names.values())

    def _loss(self, weights: dict[str, Tensor], inputs: Tensor, targets: Tensor) -> Tensor:
        outputs = functional_call(self.model, {**self.consts, **weights}, (inputs,))
        return sample_losses(outputs, targets, self.ignore_index, self.loss_fn).mean()

    def _replayed(self, offsets: Sequence[Offsets]) -> Any:
        if self.perturbation is None or not offsets:
            return nullcontext()
        return self.perturbation.use_offsets(offsets)

    def batch_gradient(self, inputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
        """Gradient of the batch-mean loss (the ``"batch"`` label mode)."""
        weights = {n: t.requires_grad_(True) for n, t in self._leaves().items()}
        with torch.enable_grad():
            loss = self._loss(weights, inputs, targets)
            grads = torch.autograd.grad(loss, list(weights.values()), allow_unused=True)
        return self._by_key(dict(zip(weights, grads, strict=True)))

    def squared_grads(
        self, inputs: Tensor, targets: Tensor, offsets: Sequence[Offsets]
    ) -> dict[str, Tensor]:
        """Σ_i g_i² over the samples of one chunk, by requested key."""
        if self.use_vmap:
            try:
                return self._vmapped(inputs, targets, offsets)
            except _VMAP_FAILURES as error:
                if not self.fallback:
                    raise
                logger.warning(
                    "per-sample gradients: vmap failed for %s (%s: %s); "
                    "falling back to a per-sample loop",
                    type(self.model).__name__,
                    type(error).__name__,
                    error,
                )
                self.use_vmap = False
        return self._looped(inputs, targets, offsets)

    def _vmapped(
        self, inputs: Tensor, targets: Tensor, offsets: Sequence[Offsets]
    ) -> dict[str, Tensor]:
        def one_sample(
            weights: dict[str, Tensor], x: Tensor, y: Tensor, offs: list[Offsets]
        ) -> Tensor:
            with self._replayed(offs):
                return self._loss(weights, x.unsqueeze(0), y.unsqueeze(0))

        per_sample: Callable[..., dict[str, Tensor]] = vmap(
            grad(one_sample), in_dims=(None, 0, 0, 0)
        )
        # Fused attention kernels have no vmap batching rule (functorch would loop over the
        # samples); the math backend decomposes into batched matmuls and softmax.
        with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
            grads = per_sample(self.scored, inputs, targets, list(offsets))
        return self._by_key({n: g.to(_acc_dtype(g)).square().sum(0) for n, g in grads.items()})

    def _looped(
        self, inputs: Tensor, targets: Tensor, offsets: Sequence[Offsets]
    ) -> dict[str, Tensor]:
        total = {n: torch.zeros_like(t, dtype=_acc_dtype(t)) for n, t in self.scored.items()}
        for i in range(inputs.shape[0]):
            weights = {n: t.requires_grad_(True) for n, t in self._leaves().items()}
            with torch.enable_grad(), self._replayed([(a[i], b[i]) for a, b in offsets]):
                loss = self._loss(weights, inputs[i : i + 1], targets[i : i + 1])
                grads = torch.autograd.grad(loss, list(weights.values()), allow_unused=True)
            for name, g in zip(weights, grads, strict=True):
                if g is not None:
                    total[name].add_(g.to(total[name].dtype).square())
        return self._by_key(total)

    def _leaves(self) -> dict[str, Tensor]:
        return {n: t.detach() for n, t in self.scored.items()}

    def _by_key(self, by_name: Mapping[str, Tensor | None]) -> dict[str, Tensor]:
        out = {}
        for key, name in self.names.items():
            value = by_name[name]
            out[key] = value if value is not None else torch.zeros_like(self.scored[name])
        return out
