"""Per-sample Fisher on a tiny ViT: vectorised (torch.func vmap) vs a per-sample loop for all
parameters, and the linear-layer hooks vs vmap for Q/K/V/FFN (FisherTune's candidates).

Prints the timings and their ratios, measured in one run. Target (issue 2): vmap ≥ 3× faster
than the loop.
"""

from __future__ import annotations

import argparse

import torch

from common import ViTSegmenter, median_seconds, segmentation_batch
from fishertune.sensitivity import diagonal_fisher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--img-size", type=int, default=56)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = ViTSegmenter(args.img_size, args.depth, args.dim, heads=4, classes=19)
    batches = [segmentation_batch(args.batch, args.img_size, 19)]
    print(
        f"tiny ViT: depth {args.depth}, dim {args.dim}, {args.img_size}px, batch {args.batch}, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
        f"{torch.get_num_threads()} threads"
    )
    times = {}
    for method in ("vmap", "loop"):
        times[method] = median_seconds(
            lambda m=method: diagonal_fisher(model, batches, labels="given", method=m),
            args.repeats,
        )
        print(f"  {method:5s} {times[method] * 1e3:8.1f} ms per batch")
    print(f"vectorised vs looped per-sample Fisher: {times['loop'] / times['vmap']:.2f}x faster")
    candidates = {n: p for n, p in model.named_parameters() if ".qkv." in n or ".mlp.fc" in n}
    for method in ("linear", "vmap"):
        times[method] = median_seconds(
            lambda m=method: diagonal_fisher(
                model, batches, params=candidates, labels="given", method=m
            ),
            args.repeats,
        )
        print(f"  Q/K/V/FFN only, {method:6s} {times[method] * 1e3:8.1f} ms per batch")
    print(f"linear-layer hooks vs vmap on Q/K/V/FFN: {times['vmap'] / times['linear']:.2f}x faster")


if __name__ == "__main__":
    main()
