"""Plumbing shared by the Fisher estimators: parameter resolution, eval mode, data, reduction."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from fishertune.process_group import world_size
from fishertune.sensitivity.losses import class_logits, model_loss, per_image_loss

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


def check_labels(labels: str) -> None:
    """Validate the ``labels`` option of the estimators.

    Every mode works with the built-in and a custom loss: with ``labels="sampled"`` and a
    ``loss_fn``, the labels drawn from the model's class logits are the targets ``loss_fn``
    receives (class indices of shape ``(B, *spatial)``).
    """
    if labels not in LABEL_MODES:
        raise ValueError(f"labels must be one of {LABEL_MODES}, got {labels!r}")


def uses_model_loss(labels: str, loss_fn: LossFn | None) -> bool:
    """Whether a dict batch keeps its labels and is scored by the model's own loss."""
    return labels != "sampled" and loss_fn is None


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
    outputs: Any, targets: Tensor | None, ignore_index: int, loss_fn: LossFn | None
) -> Tensor:
    """Per-sample losses ``(B,)`` of a batch: ``loss_fn``'s, the built-in cross-entropy on the
    class logits, or, without targets, the model's own loss (``(1,)``: one sample's loss when
    the batch holds one sample, the batch's loss otherwise)."""
    if targets is None:
        return model_loss(outputs).reshape(1)
    if loss_fn is not None:
        return loss_fn(outputs, targets)
    return per_image_loss(class_logits(outputs), targets, ignore_index)


def all_reduce_sum(tensors: Iterable[Tensor]) -> None:
    """Sum tensors in place across ranks when ``torch.distributed`` is initialised."""
    if dist.is_available() and dist.is_initialized():
        for tensor in tensors:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)


def global_share(count: int, device: torch.device) -> tuple[int, int] | None:
    """``(total, first)``: the size of the batch that spans every process and where this
    process's ``count`` samples start in it (rank order); None without a process group of
    more than one. A collective: every process must call it for the same batch."""
    if world_size() == 1:
        return None
    counts = torch.zeros(dist.get_world_size(), dtype=torch.float64, device=device)
    counts[dist.get_rank()] = count
    dist.all_reduce(counts)
    return int(counts.sum()), int(counts[: dist.get_rank()].sum())
