"""Per-sample squared gradients of a batch: the kernel of every diagonal Fisher (method.md §3).

:func:`~fishertune.sensitivity.diagonal.diagonal_fisher` sums them over the source batches at
the current weights; the stable estimator
(:func:`~fishertune.sensitivity.variational.fit_variational`) takes them at reparameterised
weight samples θ̂ + √v ε, the Fisher that paper Eq. 12 puts in place of the Hessian.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import grad, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from fishertune.sensitivity._common import (
    LossFn,
    constant_tensors,
    global_share,
    sample_losses,
)
from fishertune.sensitivity.losses import class_logits, sample_labels
from fishertune.sensitivity.model_inputs import ModelInputs
from fishertune.sensitivity.perturbation import FeaturePerturbation, Offsets

logger = logging.getLogger(__name__)

METHODS = ("auto", "linear", "vmap", "loop")
_VMAP_FAILURES = (RuntimeError, NotImplementedError, ValueError, TypeError)


def accumulation_dtype(p: Tensor) -> torch.dtype:
    """float64 for float64 parameters, float32 otherwise."""
    return torch.float64 if p.dtype == torch.float64 else torch.float32


def _recording(perturbation: FeaturePerturbation | None) -> AbstractContextManager[list[Offsets]]:
    """Record the perturbation's draws for a batch (an empty list without perturbation)."""
    if perturbation is None:
        return nullcontext([])
    return perturbation.record_offsets()


def _linear_layers(model: nn.Module, names: Iterable[str]) -> dict[str, dict[str, str]] | None:
    """Owning ``nn.Linear``'s name → {``"weight"`` | ``"bias"``: scored parameter name}, or None
    when some scored parameter is not a linear layer's weight or bias."""
    modules = dict(model.named_modules())
    layers: dict[str, dict[str, str]] = {}
    for name in names:
        owner, _, attr = name.rpartition(".")
        if not isinstance(modules.get(owner), nn.Linear) or attr not in ("weight", "bias"):
            return None
        layers.setdefault(owner, {})[attr] = name
    return dict(sorted(layers.items()))


class PerSampleGrads:
    """Per-sample and batch gradients of the scored parameters, everything else constant.

    ``names`` maps the caller's keys to the model's parameter names. The model is evaluated
    through ``functional_call`` at the parameters' current values, or at the ``weights`` a call
    passes (name → tensor), so it is never modified. Three ways to the per-sample gradients:

    - ``"linear"``: when every scored tensor is the weight or bias of an ``nn.Linear`` (Q/K/V
      and FFN of a ViT), hooks capture each layer's input X_i and output gradient G_i of every
      sample, and Σ_i (G_iᵀ X_i)² is formed layer by layer (a batched matmul, in pieces of at
      most ``max_elements``): one forward and one backward through the activations (no weight
      gradients), about the cost of a training step, and never all per-sample gradients at once;
    - ``"vmap"``: ``torch.func`` (``vmap`` over ``grad``) in chunks of ``chunk_size`` samples
      (default: as many as keep chunk × scored elements below ``max_elements``), for any
      parameter;
    - ``"loop"``: one backward per sample.

    ``method="auto"`` takes ``"linear"`` where it applies, else ``"vmap"``, and falls back to the
    loop, with a logged warning, when the model cannot be vmapped.
    """

    def __init__(
        self,
        model: nn.Module,
        names: Mapping[str, str],
        perturbation: FeaturePerturbation | None,
        ignore_index: int,
        loss_fn: LossFn | None,
        method: str,
        chunk_size: int | None = None,
        max_elements: int = 2**27,
        across_processes: bool = False,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.linear_layers = _linear_layers(model, names.values())
        if method == "linear" and self.linear_layers is None:
            raise ValueError(
                "method='linear' needs every scored parameter to be the weight or bias of an "
                "nn.Linear"
            )
        self.use_linear = method in ("auto", "linear") and self.linear_layers is not None
        self.max_elements = max_elements
        self.model = model
        self.names = dict(names)
        self.perturbation = perturbation
        self.ignore_index = ignore_index
        self.loss_fn = loss_fn
        self.use_vmap = method != "loop"
        self.fallback = method == "auto"
        own = dict(model.named_parameters())
        self.current = {name: own[name].detach() for name in self.names.values()}
        scored = sum(p.numel() for p in self.current.values())
        self.chunk = chunk_size or max(1, max_elements // max(scored, 1))
        self.consts = constant_tensors(model, self.names.values())
        self.across_processes = across_processes

    def square_sums(
        self,
        inputs: ModelInputs,
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
        the batch-mean loss, times the batch size). ``targets=None`` with ``"given"`` or
        ``"batch"`` scores the model's own loss (a dict batch that keeps its labels), each
        sample evaluated alone. With a perturbation, the ``"vmap"`` and ``"loop"`` ways first
        run the batch once without gradients to draw it (and the sampled labels) and then
        replay each sample's draw; the ``"linear"`` way needs one forward.
        """
        at = self.current if weights is None else dict(weights)
        size = inputs.size
        if labels == "batch":
            return {
                key: g.to(accumulation_dtype(g)).square().mul_(size)
                for key, g in self.batch_gradient(inputs, targets, at).items()
            }
        own_loss = targets is None and labels == "given"
        if self.use_linear and not own_loss:
            return self._linear(at, inputs, targets, labels, generator, num_label_samples)
        offsets: list[Offsets] = []
        draws: Sequence[Tensor | None] = [targets]
        if self.perturbation is not None or labels == "sampled":
            with torch.no_grad(), _recording(self.perturbation) as recorded:
                outputs = inputs.call(self.model, {**self.consts, **at})
            offsets = list(recorded)
            if labels == "sampled":
                draws = self._sampled(outputs, generator, targets, num_label_samples)
        sums = self._zeros(at)
        for drawn in draws:
            for start in range(0, size, self.chunk):
                part = slice(start, start + self.chunk)
                squares = self.squared_grads(
                    at,
                    inputs.part(part),
                    None if drawn is None else drawn[part],
                    [(a[part], b[part]) for a, b in offsets],
                )
                for key, sq in squares.items():
                    sums[key].add_(sq, alpha=1.0 / len(draws))
        return sums

    def _sampled(
        self, outputs: Any, generator: torch.Generator | None, targets: Tensor | None, count: int
    ) -> list[Tensor]:
        """``count`` label draws from the outputs' class logits; with ``across_processes`` under
        ``torch.distributed``, as one process with every process's samples would draw them."""
        logits = class_logits(outputs)
        share = global_share(logits.shape[0], logits.device) if self.across_processes else None
        return [
            sample_labels(
                logits, generator, targets=targets, ignore_index=self.ignore_index, share=share
            )
            for _ in range(count)
        ]

    def _zeros(self, at: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {
            key: torch.zeros_like(at[name], dtype=accumulation_dtype(at[name]))
            for key, name in self.names.items()
        }

    def _linear(
        self,
        at: Mapping[str, Tensor],
        inputs: ModelInputs,
        targets: Tensor | None,
        labels: str,
        generator: torch.Generator | None,
        num_label_samples: int,
    ) -> dict[str, Tensor]:
        """Σ_i g_i² of a whole batch from the linear layers' inputs and output gradients.

        One forward serves everything: the perturbation draws for the whole batch in it (the
        samples stay independent given the draw), sampled labels are drawn from its detached
        logits, and each label draw takes one backward through the activations.
        """
        assert self.linear_layers is not None
        owners = list(self.linear_layers)
        calls: dict[str, list[tuple[Tensor, Tensor]]] = {owner: [] for owner in owners}

        def capture(owner: str) -> Callable[..., None]:
            def hook(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> None:
                calls[owner].append((args[0].detach(), output))

            return hook

        handles = [self.model.get_submodule(o).register_forward_hook(capture(o)) for o in owners]
        # The scored weights require grad so that every layer's output has a graph to the loss;
        # only the gradients of those outputs are taken, never the weights'.
        graph = {name: tensor.detach().requires_grad_(True) for name, tensor in at.items()}
        try:
            with torch.enable_grad():
                outputs = inputs.call(self.model, {**self.consts, **graph})
        finally:
            for handle in handles:
                handle.remove()
        if labels == "sampled":
            draws = self._sampled(outputs, generator, targets, num_label_samples)
        else:
            assert targets is not None
            draws = [targets]
        produced = [out for owner in owners for _, out in calls[owner]]
        total: dict[str, Tensor] = {}
        for index, drawn in enumerate(draws):
            with torch.enable_grad():
                losses = sample_losses(outputs, drawn, self.ignore_index, self.loss_fn)
                grads = torch.autograd.grad(
                    losses.sum(), produced, allow_unused=True, retain_graph=index < len(draws) - 1
                )
            position = 0
            squares: dict[str, Tensor | None] = {}
            for owner in owners:
                pairs = []
                for x, _ in calls[owner]:
                    g = grads[position]
                    position += 1
                    if g is not None:
                        pairs.append((x, g))
                squares.update(self._layer_squares(owner, pairs, at))
            for key, value in self._by_key(squares, at).items():
                if key in total:
                    total[key].add_(value)
                else:
                    total[key] = value
        if len(draws) > 1:
            for value in total.values():
                value.div_(len(draws))
        return total

    def _layer_squares(
        self, owner: str, pairs: Sequence[tuple[Tensor, Tensor]], at: Mapping[str, Tensor]
    ) -> dict[str, Tensor | None]:
        """Σ_i (Σ_calls G_iᵀ X_i)² and Σ_i (Σ_calls Σ_t G_i)² of one linear layer."""
        assert self.linear_layers is not None
        wanted = self.linear_layers[owner]
        out: dict[str, Tensor | None] = dict.fromkeys(wanted.values())
        if not pairs:
            return out
        flat = [
            (x.reshape(x.shape[0], -1, x.shape[-1]), g.reshape(g.shape[0], -1, g.shape[-1]))
            for x, g in pairs
        ]
        batch, d_out, d_in = flat[0][0].shape[0], flat[0][1].shape[-1], flat[0][0].shape[-1]
        if "weight" in wanted:
            dtype = accumulation_dtype(at[wanted["weight"]])
            piece = max(1, self.max_elements // max(d_out * d_in, 1))
            total: Tensor | None = None
            for start in range(0, batch, piece):
                part = slice(start, start + piece)
                per_sample = torch.bmm(
                    flat[0][1][part].transpose(1, 2).to(dtype), flat[0][0][part].to(dtype)
                )
                for x, g in flat[1:]:  # a layer called more than once: sum its calls first
                    per_sample.baddbmm_(g[part].transpose(1, 2).to(dtype), x[part].to(dtype))
                squares = per_sample.square_().sum(0)
                total = squares if total is None else total.add_(squares)
            out[wanted["weight"]] = total
        if "bias" in wanted:
            dtype = accumulation_dtype(at[wanted["bias"]])
            bias = flat[0][1].to(dtype).sum(1)
            for _, g in flat[1:]:
                bias.add_(g.to(dtype).sum(1))
            out[wanted["bias"]] = bias.square().sum(0)
        return out

    def _loss(
        self, weights: Mapping[str, Tensor], inputs: ModelInputs, targets: Tensor | None
    ) -> Tensor:
        outputs = inputs.call(self.model, {**self.consts, **weights})
        return sample_losses(outputs, targets, self.ignore_index, self.loss_fn).mean()

    def _replayed(self, offsets: Sequence[Offsets]) -> Any:
        if self.perturbation is None or not offsets:
            return nullcontext()
        return self.perturbation.use_offsets(offsets)

    def batch_gradient(
        self, inputs: ModelInputs, targets: Tensor | None, at: Mapping[str, Tensor]
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
        inputs: ModelInputs,
        targets: Tensor | None,
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
        inputs: ModelInputs,
        targets: Tensor | None,
        offsets: Sequence[Offsets],
    ) -> dict[str, Tensor]:
        def one_sample(
            weights: dict[str, Tensor],
            tensors: list[Tensor],
            y: Tensor | None,
            offs: list[Offsets],
        ) -> Tensor:
            with self._replayed(offs):
                target = None if y is None else y.unsqueeze(0)
                return self._loss(weights, inputs.one_sample(tensors), target)

        per_sample: Callable[..., dict[str, Tensor]] = vmap(
            grad(one_sample), in_dims=(None, 0, None if targets is None else 0, 0)
        )
        # Fused attention kernels have no vmap batching rule (functorch would loop over the
        # samples); the math backend decomposes into batched matmuls and softmax.
        with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
            grads = per_sample(dict(at), inputs.batched_tensors(), targets, list(offsets))
        squares = {n: g.to(accumulation_dtype(g)).square().sum(0) for n, g in grads.items()}
        return self._by_key(squares, at)

    def _looped(
        self,
        at: Mapping[str, Tensor],
        inputs: ModelInputs,
        targets: Tensor | None,
        offsets: Sequence[Offsets],
    ) -> dict[str, Tensor]:
        total = {n: torch.zeros_like(t, dtype=accumulation_dtype(t)) for n, t in at.items()}
        for i in range(inputs.size):
            weights = {n: t.detach().requires_grad_(True) for n, t in at.items()}
            target = None if targets is None else targets[i : i + 1]
            with torch.enable_grad(), self._replayed([(a[i], b[i]) for a, b in offsets]):
                loss = self._loss(weights, inputs.part(i), target)
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
