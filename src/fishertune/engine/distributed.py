"""Data-parallel training under ``torchrun``: process group, device, gradient averaging.

``torchrun --nproc-per-node=N -m fishertune.cli train ...`` sets ``RANK`` / ``WORLD_SIZE`` /
``LOCAL_RANK``; :func:`init_distributed` then joins the process group (NCCL on GPUs, gloo on
CPU) and picks the rank's device. ``data.batch_size`` is the global batch, of which each rank
takes its share (:class:`~fishertune.engine.batches.StepSampler`); the losses normalise over
the whole batch and FisherTune's simulated shift takes its statistics over it. Gradients are
averaged with explicit bucketed all-reduces
after the backward passes (:func:`average_gradients`) instead of wrapping the model in
``DistributedDataParallel``: sparse methods change which tensors require gradients while
training (growing masks) and some tensors receive none at a step, both of which DDP's
reducer forbids. Buffers (batch-norm running statistics) are broadcast from rank 0 after
every step, as DDP does before each forward; on GPUs the trainer turns batch norm into
SyncBatchNorm, on CPU it normalises with each rank's own batch statistics. Every rank runs
the same tuner on the same weights, so masks, selections and updates stay identical; the sensitivity
estimators and the metric sum their statistics across ranks themselves. Only rank 0 writes
files.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from fishertune.process_group import reduce_mean

__all__ = [
    "DistributedContext",
    "average_gradients",
    "broadcast_buffers",
    "init_distributed",
    "reduce_mean",
    "resolve_device",
]

BUCKET_BYTES = 32 << 20
"""Gradients are all-reduced in flat buckets of about this size."""


@dataclass(frozen=True)
class DistributedContext:
    """This process's rank, the number of processes and its device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and prints (rank 0)."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """Whether more than one process takes part."""
        return self.world_size > 1


def resolve_device(device: str | None) -> torch.device:
    """The device a command runs on: ``device`` (``"cpu"``, ``"cuda"`` or ``"cuda:N"``), else
    CUDA when available, else CPU. ValueError naming ``--device`` for any other text and for
    CUDA on a machine without it."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind, sep, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (sep and (kind == "cpu" or not index.isdigit())):
        raise ValueError(f"--device: expected cpu, cuda or cuda:N, got {device!r}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"--device {device}: CUDA is not available here (torch {torch.__version__}, "
            f"CUDA build {torch.version.cuda or 'none'}); use --device cpu"
        )
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        raise ValueError(
            f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    return torch.device(device)


def init_distributed(device: str | None = None) -> DistributedContext:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1).

    ``device``: ``"cpu"``, ``"cuda"`` or ``None`` (CUDA when available). With CUDA each rank
    uses ``cuda:LOCAL_RANK`` and NCCL; on CPU, gloo.
    """
    use_cuda = resolve_device(device).type == "cuda"
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    target = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(target)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if dist.is_initialized():
        return DistributedContext(dist.get_rank(), dist.get_world_size(), target)
    return DistributedContext(0, 1, target)


def average_gradients(params: Iterable[Tensor]) -> None:
    """Replace each gradient by its mean over the ranks (no-op in a single process).

    Every rank must pass the same tensors in the same order with the same gradients present;
    gradients are flattened into buckets of :data:`BUCKET_BYTES` per dtype.
    """
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return
    world = dist.get_world_size()
    grads = [p.grad for p in params if p.grad is not None]
    bucket: list[Tensor] = []
    size = 0
    for grad in grads:
        if bucket and (grad.dtype != bucket[0].dtype or size >= BUCKET_BYTES):
            _reduce_bucket(bucket, world)
            bucket, size = [], 0
        bucket.append(grad)
        size += grad.numel() * grad.element_size()
    if bucket:
        _reduce_bucket(bucket, world)


def _reduce_bucket(grads: list[Tensor], world: int) -> None:
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat.div_(world)
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
        offset += grad.numel()


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Copy rank 0's buffers (e.g. batch-norm running statistics) to every rank."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)
