"""Training-step time, optimiser state and peak memory of every tuning method vs `full`.

Each method runs in its own process (peak resident memory is then its own) on the same ViT
(DINOv2 architecture, ``--depth`` × ``--dim``), linear head, batch and seed. Methods with an
estimation stage (``estimate(batches)``) run it first; it is not part of the step time.
Target (issue 4): FisherTune's step ≤ 1.05× full fine-tuning's, its optimiser state close to
the adapters'.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import torch
from torch import Tensor


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of all tensors in the optimiser state."""
    return sum(
        v.nbytes for s in optimizer.state.values() for v in s.values() if isinstance(v, Tensor)
    )


def measure(method: str, args: argparse.Namespace) -> dict[str, Any]:
    """Build, tune and time one method; memory figures are growth over the built model."""
    from fishertune.models import build_segmentor
    from fishertune.tuners import build_tuner

    torch.manual_seed(0)
    model = build_segmentor(
        "vit_small_patch14_dinov2",
        head="linear",
        img_size=args.size,
        depth=args.depth,
        embed_dim=args.dim,
        num_heads=max(1, args.dim // 64),
    )
    images = torch.randn(args.batch, 3, args.size, args.size)
    labels = torch.randint(0, 19, (args.batch, args.size, args.size))
    tuner = build_tuner(method, model)
    estimate = getattr(tuner, "estimate", None)
    if callable(estimate):
        estimate([(images, labels)])
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    optimizer = tuner.make_optimizer(lr=1e-4, weight_decay=0.05)
    times = []
    model.train()
    for step in range(args.steps + 1):
        start = time.perf_counter()
        tuner.on_step(step, args.steps + 1)
        with tuner.train_context():
            losses = model(images, labels)
        assert isinstance(losses, dict)
        optimizer.zero_grad()
        torch.autograd.backward(sum(losses.values()))
        tuner.after_backward()
        optimizer.step()
        if step:
            times.append(time.perf_counter() - start)
    return {
        "step_ms": statistics.median(times) * 1e3,
        "state_mib": state_bytes(optimizer) / 2**20,
        "peak_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024,
        "trainable": tuner.count().backbone,
    }


def main() -> None:
    from fishertune.tuners import available_tuners

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--methods", default="", help="comma-separated (default: all)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args)))
        return
    methods = args.methods.split(",") if args.methods else available_tuners()
    if "full" in methods:
        methods = ["full", *[m for m in methods if m != "full"]]
    print(
        f"ViT {args.depth} × {args.dim}, {args.size}px, batch {args.batch}, linear head, "
        f"{torch.get_num_threads()} threads"
    )
    header = ("method", "trainable", "step", "× full", "opt. state", "peak +MiB", "× full")
    print("{:14s} {:>10s} {:>9s} {:>7s} {:>11s} {:>10s} {:>7s}".format(*header))
    reference: dict[str, Any] | None = None
    for method in methods:
        command = [sys.executable, __file__, "--one", method]
        for option in ("depth", "dim", "size", "batch", "steps"):
            command += [f"--{option}", str(getattr(args, option))]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        r = json.loads(done.stdout.strip().splitlines()[-1])
        reference = reference or r
        print(
            f"{method:14s} {r['trainable'] / 1e6:9.2f}M {r['step_ms']:7.1f}ms "
            f"{r['step_ms'] / reference['step_ms']:6.2f}x {r['state_mib']:9.1f}MiB "
            f"{r['peak_mib']:10.1f} {r['peak_mib'] / max(reference['peak_mib'], 1e-9):6.2f}x"
        )


if __name__ == "__main__":
    main()
