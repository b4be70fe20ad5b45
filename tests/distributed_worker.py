"""Run by ``torchrun`` from test_distributed.py: each rank scores its shard of one data set."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from fishertune.sensitivity import diagonal_fisher, fit_variational


def build() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The same model and 8 samples on every rank (and in the single-process reference)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 1))
    x = torch.randn(8, 3, 5, 5)
    y = torch.randint(0, 3, (8, 5, 5))
    y[0, 0] = 255
    return model, x, y


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model, x, y = build()
    shard = slice(rank * 8 // world, (rank + 1) * 8 // world)
    xs, ys = x[shard], y[shard]
    fisher = diagonal_fisher(model, [(xs[:2], ys[:2]), (xs[2:], ys[2:])], labels="given")
    lam = fit_variational(
        model,
        [(xs, ys)],
        gamma=1e-3,
        tau=0.1,
        steps=3,
        generator=torch.Generator().manual_seed(rank),
    ).precision
    torch.save({"fisher": fisher, "precision": lam}, out / f"rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
