"""Training-step time, optimiser state and peak memory of every tuning method vs `full`.

Each method runs in its own process on the same ViT (DINOv2 architecture, ``--depth`` ×
``--dim``), linear head, batch and seed. Methods with an estimation stage (``estimate(batches)``)
run it first (FisherTune with 5 variational steps per pass, enough to build its masks); it is
part of neither the step time nor the memory figure: the peak is the high-water mark of resident
memory during the training steps (Linux ``VmHWM``, reset after building and estimating) minus
the resident memory before them (after ``malloc_trim``, so that memory the estimation freed
does not hide the training peak).
Target (issue 4): FisherTune's step ≤ 1.05× full fine-tuning's, its optimiser state close to
the adapters'.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import gc
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of all tensors in the optimiser state."""
    return sum(
        v.nbytes for s in optimizer.state.values() for v in s.values() if isinstance(v, Tensor)
    )


def _status_kib(field: str) -> int:
    """A memory field of /proc/self/status, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def measure(method: str, args: argparse.Namespace) -> dict[str, Any]:
    """Build, tune and time one method; memory figures are growth over the built model."""
    from fishertune.models import build_segmentor
    from fishertune.tuners import build_tuner, tuner_class

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
    fields = {f.name for f in dataclasses.fields(tuner_class(method).config_class)}
    options = {"variational_steps": 5} if "variational_steps" in fields else {}
    tuner = build_tuner(method, model, **options)
    estimate = getattr(tuner, "estimate", None)
    if callable(estimate):
        estimate([(images, labels)])
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand memory freed by estimation back to the OS
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark (VmHWM)
    base = _status_kib("VmRSS")
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
        "peak_mib": (_status_kib("VmHWM") - base) / 1024,
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
