"""One variational Fisher step vs one plain training step on the same model and batch.

A variational step (the default ``curvature="fisher"``) draws weights from q, takes the
per-sample squared gradients there (one forward, one backward through the activations and the
linear layers' per-sample products) and updates Λ; a training step is forward, backward and
AdamW. Both train / score FisherTune's candidates (Q/K/V and FFN). Prints the ratio measured
in one run (medians of interleaved repeats). Target (issues 2 and 10): ≤ 1.3×.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from common import ViTSegmenter, median_seconds, segmentation_batch
from fishertune.sensitivity import fit_variational, per_image_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--img-size", type=int, default=112)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--dim", type=int, default=192)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = ViTSegmenter(args.img_size, args.depth, args.dim, heads=3, classes=19)
    x, y = segmentation_batch(args.batch, args.img_size, 19)
    # FisherTune's candidates: Q/K/V (fused qkv) and the FFN of every block (paper Eq. 3).
    params = {n: p for n, p in model.named_parameters() if ".qkv." in n or ".mlp.fc" in n}
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    print(
        f"ViT: depth {args.depth}, dim {args.dim}, {args.img_size}px, batch {args.batch}; "
        f"{sum(p.numel() for p in params.values()) / 1e6:.2f}M scored/trained parameters, "
        f"{torch.get_num_threads()} threads"
    )
    optimizer = torch.optim.AdamW(list(params.values()), lr=1e-6)

    def train_steps() -> None:
        for _ in range(args.steps):
            optimizer.zero_grad()
            loss = per_image_loss(model(x), y).mean()
            torch.autograd.backward(loss)
            optimizer.step()

    # An estimation stage derives γ and τ in its first fit (one quantile over the curvature of
    # the first step) and passes them to its other three fits; the steps timed here are those
    # of a fit with γ and τ given, of the length of the demo's half-fits.
    first = fit_variational(model, [(x, y)], params=params, steps=2)

    def variational_steps() -> None:
        fit_variational(
            model, [(x, y)], params=params, steps=args.steps, gamma=first.gamma, tau=first.tau
        )

    model.eval()
    train_steps()
    variational_steps()
    start = time.perf_counter()
    fit_variational(model, [(x, y)], params=params, steps=args.steps)
    derived = (time.perf_counter() - start) / args.steps
    # Interleaved, so that drifts of the machine's speed hit both alike.
    train_runs, variational_runs = [], []
    for _ in range(args.repeats):
        train_runs.append(median_seconds(train_steps, 1, warmup=0))
        variational_runs.append(median_seconds(variational_steps, 1, warmup=0))
    train = statistics.median(train_runs) / args.steps
    variational = statistics.median(variational_runs) / args.steps
    print(f"  training step     {train * 1e3:8.1f} ms")
    print(f"  variational step  {variational * 1e3:8.1f} ms")
    print(f"  (a first fit, deriving γ and τ: {derived * 1e3:.1f} ms per step, one sample)")
    print(f"variational step / training step: {variational / train:.2f}x")


if __name__ == "__main__":
    main()
