"""Per-sample squared gradients of a batch: the kernel of every diagonal Fisher (method.md §3).

:func:`~fishertune.sensitivity.diagonal.diagonal_fisher` sums them over the source batches at
the current weights; the stable estimator
(:func:`~fishertune.sensitivity.variational.fit_variational`) takes them at reparameterised
weight samples θ̂ + √v ε, the Fisher that paper Eq. 12 puts in place of the Hessian.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from fishertune.sensitivity._common import LossFn, constant_tensors, sample_losses
from fishertune.sensitivity.losses import sample_labels
from fishertune.sensitivity.perturbation import FeaturePerturbation, Offsets

logger = logging.getLogger(__name__)

METHODS = ("auto", "vmap", "loop")
_VMAP_FAILURES = (RuntimeError, NotImplementedError, ValueError, TypeError)


def accumulation_dtype(p: Tensor) -> torch.dtype:
    """float64 for float64 parameters, float32 otherwise."""
    return torch.float64 if p.dtype == torch.float64 else torch.float32


def _recording(perturbation: FeaturePerturbation | None) -> AbstractContextManager[list[Offsets]]:
    """Record the perturbation's draws for a batch (an empty list without perturbation)."""
    if perturbation is None:
        return nullcontext([])
    return perturbation.record_offsets()


class PerSampleGrads:
    """Per-sample and batch gradients of the scored parameters, everything else constant.

    ``names`` maps the caller's keys to the model's parameter names. The model is evaluated
    through ``functional_call`` at the parameters' current values, or at the ``weights`` a call
    passes (name → tensor), so it is never modified. Per-sample gradients use ``torch.func``
    (``vmap`` over ``grad``) in chunks of ``chunk`` samples; ``method="auto"`` falls back to a
    per-sample loop, with a logged warning, when the model cannot be vmapped.
    """

    def __init__(
        self,
        model: nn.Module,
        names: Mapping[str, str],
        perturbation: FeaturePerturbation | None,
        ignore_index: int,
        loss_fn: LossFn | None,
        method: str,
        chunk: int,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.model = model
        self.names = dict(names)
        self.perturbation = perturbation
        self.ignore_index = ignore_index
        self.loss_fn = loss_fn
        self.use_vmap = method != "loop"
        self.fallback = method == "auto"
        self.chunk = chunk
        own = dict(model.named_parameters())
        self.current = {name: own[name].detach() for name in self.names.values()}
        self.consts = constant_tensors(model, self.names.values())

    def square_sums(
        self,
        inputs: Tensor,
        targets: Tensor | None,
        *,
        labels: str,
        generator: torch.Generator | None = None,
        num_label_samples: int = 1,
        weights: Mapping[str, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """Σ_i (∂ℓ_i/∂θ)² over the samples of one batch, by requested key (method.md §3).

        ``labels``: ``"given"`` (targets), ``"sampled"`` (drawn per pixel from the detached
        softmax, ``num_label_samples`` draws averaged) or ``"batch"`` (the squared gradient of
        the batch-mean loss, times the batch size). With a perturbation, the batch first runs
        once without gradients to draw it (and the sampled labels); every sample then replays
        its own draw.
        """
        at = self.current if weights is None else dict(weights)
        size = inputs.shape[0]
        if labels == "batch":
            assert targets is not None
            return {
                key: g.to(accumulation_dtype(g)).square().mul_(size)
                for key, g in self.batch_gradient(inputs, targets, at).items()
            }
        offsets: list[Offsets] = []
        draws: list[Tensor] = []
        if self.perturbation is not None or labels == "sampled":
            with torch.no_grad(), _recording(self.perturbation) as recorded:
                logits = functional_call(self.model, {**self.consts, **at}, (inputs,))
            offsets = list(recorded)
            if labels == "sampled":
                draws = [
                    sample_labels(
                        logits, generator, targets=targets, ignore_index=self.ignore_index
                    )
                    for _ in range(num_label_samples)
                ]
        if labels == "given":
            assert targets is not None
            draws = [targets]
        sums = {
            key: torch.zeros_like(at[name], dtype=accumulation_dtype(at[name]))
            for key, name in self.names.items()
        }
        for drawn in draws:
            for start in range(0, size, self.chunk):
                part = slice(start, start + self.chunk)
                squares = self.squared_grads(
                    at, inputs[part], drawn[part], [(a[part], b[part]) for a, b in offsets]
                )
                for key, sq in squares.items():
                    sums[key].add_(sq, alpha=1.0 / len(draws))
        return sums

    def _loss(self, weights: Mapping[str, Tensor], inputs: Tensor, targets: Tensor) -> Tensor:
        outputs = functional_call(self.model, {**self.consts, **weights}, (inputs,))
        return sample_losses(outputs, targets, self.ignore_index, self.loss_fn).mean()

    def _replayed(self, offsets: Sequence[Offsets]) -> Any:
        if self.perturbation is None or not offsets:
            return nullcontext()
        return self.perturbation.use_offsets(offsets)

    def batch_gradient(
        self, inputs: Tensor, targets: Tensor, at: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        """Gradient of the batch-mean loss at the weights ``at``."""
        weights = {n: t.detach().requires_grad_(True) for n, t in at.items()}
        with torch.enable_grad():
            loss = self._loss(weights, inputs, targets)
            grads = torch.autograd.grad(loss, list(weights.values()), allow_unused=True)
        return self._by_key(dict(zip(weights, grads, strict=True)), at)

    def squared_grads(
        self,
        at: Mapping[str, Tensor],
        inputs: Tensor,
        targets: Tensor,
        offsets: Sequence[Offsets],
    ) -> dict[str, Tensor]:
        """Σ_i g_i² over the samples of one chunk at the weights ``at``, by requested key."""
        if self.use_vmap:
            try:
                return self._vmapped(at, inputs, targets, offsets)
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
        return self._looped(at, inputs, targets, offsets)

    def _vmapped(
        self,
        at: Mapping[str, Tensor],
        inputs: Tensor,
        targets: Tensor,
        offsets: Sequence[Offsets],
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
            grads = per_sample(dict(at), inputs, targets, list(offsets))
        squares = {n: g.to(accumulation_dtype(g)).square().sum(0) for n, g in grads.items()}
        return self._by_key(squares, at)

    def _looped(
        self,
        at: Mapping[str, Tensor],
        inputs: Tensor,
        targets: Tensor,
        offsets: Sequence[Offsets],
    ) -> dict[str, Tensor]:
        total = {n: torch.zeros_like(t, dtype=accumulation_dtype(t)) for n, t in at.items()}
        for i in range(inputs.shape[0]):
            weights = {n: t.detach().requires_grad_(True) for n, t in at.items()}
            with torch.enable_grad(), self._replayed([(a[i], b[i]) for a, b in offsets]):
                loss = self._loss(weights, inputs[i : i + 1], targets[i : i + 1])
                grads = torch.autograd.grad(loss, list(weights.values()), allow_unused=True)
            for name, g in zip(weights, grads, strict=True):
                if g is not None:
                    total[name].add_(g.to(total[name].dtype).square())
        return self._by_key(total, at)

    def _by_key(
        self, by_name: Mapping[str, Tensor | None], at: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        out = {}
        for key, name in self.names.items():
            value = by_name[name]
            out[key] = value if value is not None else torch.zeros_like(at[name])
        return out
