"""SparseAdamW vs dense torch.optim.AdamW on ViT-B-sized parameters: state bytes and step time.

Builds the parameter tensors of ``--blocks`` ViT blocks of width ``--dim`` (12 blocks of 768 are
ViT-B's 85M backbone elements: qkv, proj, fc1, fc2 with biases and two LayerNorms per block),
random gradients and random selection masks of ``--fraction`` of each tensor, then measures

- the optimiser state after one step (sum of ``nbytes`` of every state tensor), and
- the median step time over ``--steps`` steps after ``--warmup`` steps,

for dense AdamW (default settings, and ``foreach=True``) and for SparseAdamW with one cohort
(every element selected at the start), with two (half the selection added one step later,
so per-element bias corrections are in use), and with torch's indexing ops instead of the
fused CPU kernel (``fused=False``), in one run, the optimisers taking their steps in turn. The
time ratios are medians over rounds of the ratio within a round, so that the machine's load
drifting between rounds cancels. glibc is told to keep freed memory, so that dense AdamW's
temporaries do not page-fault afresh each step (which doubles its time at random; see
``keep_freed_memory``): the comparison is with dense AdamW at its fastest. Targets (issue
23): state <= 12% of dense, step time <= 0.25x dense.

    .venv/bin/python benchmarks/sparse_adamw.py            # ViT-B, < 1 minute on 2 CPU cores
    .venv/bin/python benchmarks/sparse_adamw.py --blocks 2 # quicker
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from fishertune.optim import SparseAdamW, fused_kernel_status
from fishertune.selection import Selection


def vit_parameters(blocks: int, dim: int, device: torch.device) -> list[nn.Parameter]:
    """The weight and bias tensors of ``blocks`` ViT blocks (MLP ratio 4), random values."""
    shapes: list[tuple[int, ...]] = []
    for _ in range(blocks):
        shapes += [(dim,), (dim,)]  # norm1
        shapes += [(3 * dim, dim), (3 * dim,)]  # attn.qkv
        shapes += [(dim, dim), (dim,)]  # attn.proj
        shapes += [(dim,), (dim,)]  # norm2
        shapes += [(4 * dim, dim), (4 * dim,)]  # mlp.fc1
        shapes += [(dim, 4 * dim), (dim,)]  # mlp.fc2
    return [nn.Parameter(torch.randn(shape, device=device) * 0.02) for shape in shapes]


# glibc's mallopt parameters (malloc.h) and the largest mmap threshold it accepts on 64-bit.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_MAX = 32 * 2**20


def keep_freed_memory() -> str:
    """Make glibc keep freed memory for reuse instead of returning it to the system.

    Dense AdamW allocates a parameter-sized temporary per tensor per step (its ``sqrt``). glibc
    serves blocks above its mmap threshold (128 KiB, raised adaptively up to 32 MiB) with fresh
    pages from the system, which are zeroed and page-faulted on every step: depending on the
    threshold's history in the process, the same AdamW step then takes about 125 ms or about
    twice that on this machine. Fixing the threshold at its maximum and never trimming the heap
    keeps dense AdamW at its fast time, the stricter baseline for the sparse step.
    """
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is None or not hasattr(libc, "mallopt"):
        return "allocator left as it is (no glibc mallopt)"
    if libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) and libc.mallopt(
        M_TRIM_THRESHOLD, 2**31 - 1
    ):
        threshold = MMAP_THRESHOLD_MAX >> 20
        return f"glibc keeps freed memory (mmap threshold {threshold} MiB, no trimming)"
    return "allocator left as it is (mallopt refused)"


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held by all tensors in the optimiser state."""
    return sum(
        value.nbytes
        for state in optimizer.state.values()
        for value in state.values()
        if isinstance(value, Tensor)
    )


def timed_step(optimizer: torch.optim.Optimizer, synchronize: Callable[[], None]) -> float:
    start = time.perf_counter()
    optimizer.step()
    synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=12, help="ViT blocks (12: ViT-B)")
    parser.add_argument("--dim", type=int, default=768, help="embedding width (768: ViT-B)")
    parser.add_argument("--fraction", type=float, default=0.05, help="selected share")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after the first")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (median reported)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    allocator = keep_freed_memory()
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    params = vit_parameters(args.blocks, args.dim, device)
    for param in params:
        param.grad = torch.randn_like(param)
    named = {f"p{i}": param for i, param in enumerate(params)}
    ranked = {name: torch.rand(param.shape, device=device) for name, param in named.items()}
    selection = Selection.from_masks({n: rank < args.fraction for n, rank in ranked.items()})
    half = Selection.from_masks({n: rank < args.fraction / 2 for n, rank in ranked.items()})
    elements = sum(param.numel() for param in params)
    selected = selection.count
    print(
        f"{args.blocks} blocks x {args.dim}: {len(params)} tensors, {elements / 1e6:.1f}M elements,"
        f" {selected / 1e6:.2f}M selected ({selected / elements:.1%}); device {device},"
        f" {torch.get_num_threads()} threads, torch {torch.__version__}; {allocator}"
    )

    if device.type == "cpu":
        print(f"SparseAdamW CPU kernel: {fused_kernel_status()}")

    # The optimisers share the parameters (only timing and state sizes matter here) and take
    # their steps in turn, so that load from other processes and the allocator's state affect
    # all of them alike. "2 cohorts" starts from half the selection and grows to the full one
    # after its first step, so that its elements have two different steps (per-element bias
    # corrections); the plain SparseAdamW keeps one cohort (AdamW's scalar bias corrections).
    grown = SparseAdamW(params, half, named)
    grown.step()
    grown.update_selection(selection)
    optimizers: dict[str, torch.optim.Optimizer] = {
        "AdamW (default)": torch.optim.AdamW(params),
        "AdamW (foreach=True)": torch.optim.AdamW(params, foreach=True),
        "SparseAdamW": SparseAdamW(params, selection, named),
        "SparseAdamW (2 cohorts)": grown,
        "SparseAdamW (fused=False)": SparseAdamW(params, selection, named, fused=False),
    }
    for optimizer in optimizers.values():
        optimizer.step()  # allocates the state
    sizes = {name: state_bytes(optimizer) for name, optimizer in optimizers.items()}
    times: dict[str, list[float]] = {name: [] for name in optimizers}
    for round_ in range(args.warmup + args.steps):
        for name, optimizer in optimizers.items():
            seconds = timed_step(optimizer, synchronize)
            if round_ >= args.warmup:
                times[name].append(seconds)
    print(f"{'optimiser':<26} {'state MiB':>10} {'median step ms':>15} {'vs AdamW':>9}")
    dense = times["AdamW (default)"]
    ratios = {
        name: statistics.median(t / d for t, d in zip(times[name], dense, strict=True))
        for name in optimizers
    }
    for name in optimizers:
        print(
            f"{name:<26} {sizes[name] / 2**20:>10.1f} {statistics.median(times[name]) * 1e3:>15.1f}"
            f" {ratios[name]:>8.2f}x"
        )
    print(
        f"state ratio sparse/dense = {sizes['SparseAdamW'] / sizes['AdamW (default)']:.1%}"
        " (target <= 12%)"
    )
    print(
        f"step time ratio sparse/dense = {ratios['SparseAdamW']:.2f}x (target <= 0.25x);"
        f" 2 cohorts: {ratios['SparseAdamW (2 cohorts)']:.2f}x;"
        f" torch indexing ops (fused=False): {ratios['SparseAdamW (fused=False)']:.2f}x"
    )


if __name__ == "__main__":
    main()
