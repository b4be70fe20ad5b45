"""Run by ``torchrun`` from test_distributed.py: SparseFinetune on each rank's half of every
global batch, gradients averaged over the ranks as data parallelism does."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor

from conftest import tiny_vit_classifier
from fishertune.finetune import FinetuneConfig, SparseFinetune

CONFIGS = {
    "F": FinetuneConfig(
        total_steps=6, refresh_every=2, dense_modules=("head",), variant="F", shift_module=None
    ),
    "DRF": FinetuneConfig(total_steps=6, refresh_every=2, dense_modules=("head",)),
    "DRF_across": FinetuneConfig(
        total_steps=6, refresh_every=2, dense_modules=("head",), across_processes=True
    ),
}
"""F alone equals one process with the global batch; by default the DRF's simulated shift draws
from each rank's own micro-batch (its batch statistics and noise), so a DRF run equals one
process only in distribution, while every rank still holds the same (reduced) scores and
selection; with ``across_processes`` the shift spans the ranks' micro-batches and the DRF run
equals one process too."""


def global_batches() -> list[tuple[Tensor, Tensor]]:
    """Four global batches of 8 images, the same on every rank and in the reference."""
    generator = torch.Generator().manual_seed(3)
    return [
        (
            torch.randn(8, 3, 32, 32, generator=generator),
            torch.randint(0, 5, (8,), generator=generator),
        )
        for _ in range(4)
    ]


def finetune(
    batches: list[tuple[Tensor, Tensor]], variant: str
) -> tuple[SparseFinetune, dict[str, Tensor]]:
    """Estimate on ``batches`` with :data:`CONFIGS` ``[variant]``, then 6 steps on them in
    turn; gradients are averaged over the ranks under torch.distributed. Returns the tuner and
    the tuned weights."""
    model = tiny_vit_classifier()
    tuner = SparseFinetune(model, CONFIGS[variant])
    tuner.estimate(batches)
    optimizer = tuner.optimizer(lr=1e-2)
    distributed = dist.is_available() and dist.is_initialized()
    for step in range(6):
        x, y = batches[step % len(batches)]
        F.cross_entropy(model(x), y).backward()
        if distributed:
            for param in model.parameters():
                if param.grad is not None:
                    dist.all_reduce(param.grad)
                    param.grad /= dist.get_world_size()
        optimizer.step()
        optimizer.zero_grad()
        tuner.step()
    return tuner, {k: v.detach().clone() for k, v in model.state_dict().items()}


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    half = slice(rank * 8 // world, (rank + 1) * 8 // world)
    for variant in CONFIGS:
        tuner, weights = finetune([(x[half], y[half]) for x, y in global_batches()], variant)
        assert tuner.selection is not None
        indices = {f"selection:{k}": v.contiguous() for k, v in tuner.selection.items()}
        save_file({**weights, **indices}, str(out / f"{variant}{rank}.safetensors"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
