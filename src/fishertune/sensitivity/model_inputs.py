"""What one batch hands the model, for the estimators: a tensor, a dict of keyword tensors, or
a Hugging Face batch whose ``labels`` the model turns into its own loss (method.md §3).

A batch is either an ``(inputs, targets)`` pair, where ``inputs`` is a tensor (the model's
one positional argument) or a mapping (its keyword arguments), or a mapping on its own (a
Hugging Face-style batch: ``model(**batch)``). Per-sample work splits every top-level tensor
whose first dimension is the batch size; other values are passed unchanged to every call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

LABEL_KEY = "labels"
"""The key of a dict batch holding the targets (Hugging Face's convention)."""


@dataclass(frozen=True)
class ModelInputs:
    """The positional and keyword arguments of one model call, with the batch size."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    size: int

    @classmethod
    def of(cls, inputs: Any) -> ModelInputs:
        """A tensor (one positional argument) or a mapping (keyword arguments)."""
        args: tuple[Any, ...] = ()
        kwargs: dict[str, Any] = {}
        if isinstance(inputs, Tensor):
            args = (inputs,)
        elif isinstance(inputs, Mapping):
            kwargs = {str(k): v for k, v in inputs.items()}
        else:
            raise TypeError(
                f"batch inputs must be a tensor or a dict of tensors, got {type(inputs).__name__}"
            )
        leaves = [v for v in (*args, *kwargs.values()) if isinstance(v, Tensor) and v.dim() > 0]
        if not leaves:
            raise ValueError("batch inputs hold no tensor with a batch dimension")
        return cls(args, kwargs, int(leaves[0].shape[0]))

    def _batched(self, value: Any) -> bool:
        return isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == self.size

    def _map(self, fn: Any) -> ModelInputs:
        args = tuple(fn(v) if self._batched(v) else v for v in self.args)
        kwargs = {k: fn(v) if self._batched(v) else v for k, v in self.kwargs.items()}
        return ModelInputs(args, kwargs, self.size)

    def to(self, device: torch.device) -> ModelInputs:
        """Every tensor moved to ``device``."""
        args = tuple(v.to(device) if isinstance(v, Tensor) else v for v in self.args)
        kwargs = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in self.kwargs.items()}
        return ModelInputs(args, kwargs, self.size)

    def part(self, index: slice | int) -> ModelInputs:
        """The samples at ``index`` (an int keeps a batch of one)."""
        part = slice(index, index + 1) if isinstance(index, int) else index
        out = self._map(lambda v: v[part])
        size = len(range(*part.indices(self.size)))
        return ModelInputs(out.args, out.kwargs, size)

    def batched_tensors(self) -> list[Tensor]:
        """The tensors split per sample, in argument order (what ``vmap`` maps over)."""
        values = (*self.args, *self.kwargs.values())
        return [v for v in values if self._batched(v)]

    def one_sample(self, tensors: Sequence[Tensor]) -> ModelInputs:
        """These inputs with the batched tensors replaced by one sample's (no batch dimension),
        given a batch dimension of one again: the inside of a ``vmap`` over samples."""
        queue = iter(tensors)
        out = self._map(lambda _: next(queue).unsqueeze(0))
        return ModelInputs(out.args, out.kwargs, 1)

    def call(self, model: nn.Module, tensors: Mapping[str, Tensor]) -> Any:
        """``model(*args, **kwargs)`` with its parameters and buffers taken from ``tensors``."""
        return functional_call(model, dict(tensors), self.args, self.kwargs)


def unpack_batch(
    batch: Any, device: torch.device, *, need_targets: bool, model_loss: bool
) -> tuple[ModelInputs, Tensor | None]:
    """Split one item of ``batches`` into the model's inputs and the targets, on ``device``.

    ``(inputs, targets)`` pairs give their targets (None allowed unless ``need_targets``). A
    dict batch gives its :data:`LABEL_KEY` as targets; with ``model_loss`` (labels
    ``"given"`` and no ``loss_fn``) the labels stay in the batch instead and the targets are
    None: the model computes its own loss from them (a Hugging Face ``ModelOutput.loss``).
    """
    if isinstance(batch, Mapping):
        kwargs = dict(batch)
        if model_loss:
            if LABEL_KEY not in kwargs:
                raise ValueError(
                    f"a dict batch scored by the model's own loss needs its {LABEL_KEY!r} key "
                    f"(got keys {sorted(kwargs)}); or pass loss_fn"
                )
            return ModelInputs.of(kwargs).to(device), None
        targets = kwargs.pop(LABEL_KEY, None)
        if targets is None and need_targets:
            raise ValueError(f"the dict batch has no {LABEL_KEY!r} key (got keys {sorted(kwargs)})")
        inputs = ModelInputs.of(kwargs).to(device)
        return inputs, None if targets is None else targets.to(device)
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise TypeError(
            "each item of batches must be an (inputs, targets) pair or a dict batch, got "
            f"{type(batch).__name__}"
        )
    raw_inputs, targets = batch
    inputs = ModelInputs.of(raw_inputs).to(device)
    if targets is None:
        if need_targets:
            raise ValueError("targets are required for this label mode (got None)")
        return inputs, None
    if not isinstance(targets, Tensor):
        raise TypeError(f"batch targets must be a tensor, got {type(targets).__name__}")
    return inputs, targets.to(device)
