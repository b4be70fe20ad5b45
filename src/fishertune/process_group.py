"""The process group every layer may ask about: how many processes share the work, and a
value's mean over them (both trivial without ``torch.distributed``)."""

from __future__ import annotations

import torch.distributed as dist
from torch import Tensor

__all__ = ["reduce_mean", "world_size"]


def world_size() -> int:
    """Number of processes, 1 without an initialised ``torch.distributed`` process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def reduce_mean(value: Tensor) -> Tensor:
    """``value`` averaged over the processes (a copy; the value itself in a single process).
    A collective: every process must call it."""
    if world_size() == 1:
        return value
    total = value.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / dist.get_world_size()
