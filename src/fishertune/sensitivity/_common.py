"""Plumbing shared by the Fisher estimators: parameter resolution, eval mode, data, reduction."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from fishertune.sensitivity.losses import per_image_loss

Batch = tuple[Tensor, Tensor | None]
LossFn = Callable[[Any, Tensor], Tensor]
"""``loss_fn(outputs, targets)`` returning the ``(B,)`` per-sample losses of a batch."""

LABEL_MODES = ("sampled", "given", "batch")


def resolve_params(model: nn.Module, params: Mapping[str, Tensor] | None) -> dict[str, str]:
    """Map each requested name to the model's own parameter name (matched by identity).

    ``params=None`` selects every parameter with ``requires_grad``.
    """
    owned = {id(p): name for name, p in model.named_parameters()}
    if params is None:
        chosen = {name: name for name, p in model.named_parameters() if p.requires_grad}
    else:
        chosen = {}
        for key, tensor in params.items():
            if id(tensor) not in owned:
                raise ValueError(f"params[{key!r}] is not a parameter of the given model")
            chosen[key] = owned[id(tensor)]
    if not chosen:
        raise ValueError("no parameters to score: pass params= or unfreeze some parameters")
    return chosen


def constant_tensors(model: nn.Module, scored: Iterable[str]) -> dict[str, Tensor]:
    """Every parameter not scored (detached, so it is a constant) and every buffer."""
    skip = set(scored)
    consts = {n: p.detach() for n, p in model.named_parameters() if n not in skip}
    consts.update(dict(model.named_buffers()))
    return consts


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run the model in eval mode (no dropout, running norm statistics), then restore modes.

    Fisher estimation treats every image independently; batch-coupled layers in training mode
    (BatchNorm statistics) and random dropout masks would break that.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def check_labels(labels: str, loss_fn: LossFn | None) -> None:
    """Validate the ``labels`` option of the estimators."""
    if labels not in LABEL_MODES:
        raise ValueError(f"labels must be one of {LABEL_MODES}, got {labels!r}")
    if labels == "sampled" and loss_fn is not None:
        raise ValueError(
            "labels='sampled' draws labels from the model's softmax and needs the built-in "
            "cross-entropy; use labels='given' with a custom loss_fn"
        )


def unpack_batch(batch: Any, device: torch.device, need_targets: bool) -> Batch:
    """Split one item of ``batches`` into inputs and targets, moved to ``device``."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise TypeError(
            f"each item of batches must be an (inputs, targets) pair, got {type(batch).__name__}"
        )
    inputs, targets = batch
    if not isinstance(inputs, Tensor):
        raise TypeError(f"batch inputs must be a tensor, got {type(inputs).__name__}")
    if targets is None:
        if need_targets:
            raise ValueError("targets are required for this label mode (got None)")
        return inputs.to(device), None
    return inputs.to(device), targets.to(device)


def cycle(batches: Iterable[Any]) -> Iterator[Any]:
    """Yield from ``batches`` forever, re-iterating it when it is exhausted."""
    while True:
        empty = True
        for item in batches:
            empty = False
            yield item
        if empty:
            raise ValueError("batches is empty (or a one-shot iterator that is exhausted)")


def sample_losses(
    outputs: Any, targets: Tensor, ignore_index: int, loss_fn: LossFn | None
) -> Tensor:
    """Per-sample losses ``(B,)`` of a batch, with the built-in or a custom loss."""
    if loss_fn is not None:
        losses = loss_fn(outputs, targets)
    else:
        losses = per_image_loss(outputs, targets, ignore_index)
    return losses


def all_reduce_sum(tensors: Iterable[Tensor]) -> None:
    """Sum tensors in place across ranks when ``torch.distributed`` is initialised."""
    if dist.is_available() and dist.is_initialized():
        for tensor in tensors:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)


def world_size() -> int:
    """Number of ranks, 1 without ``torch.distributed``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1
