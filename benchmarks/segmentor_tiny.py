"""Time and peak memory of one training step and one prediction for tiny VFM segmentors on CPU.

Each family × head runs in its own process so that peak resident memory (ru_maxrss) is its
own; the memory figure is the peak growth over the process's footprint after building the
model. Tiny configurations of the real architectures (4 blocks × 32 channels; Mask2Former with
32 channels, 8 queries, 2 + 3 layers), a batch of 2 images of 112 × 112.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

FAMILIES = {
    "DINOv2": ("vit_small_patch14_dinov2", {}),
    "EVA02": ("eva02_large_patch14_448", {}),
    "CLIP": ("vit_base_patch16_clip_224", {}),
    "SAM": ("samvit_base_patch16", {"global_attn_indexes": [3], "window_size": 4}),
    "MAE": ("vit_base_patch16_224.mae", {}),
}
TINY_M2F = {
    "hidden_dim": 32,
    "num_queries": 8,
    "pixel_decoder_layers": 2,
    "decoder_layers": 3,
    "num_heads": 2,
    "pixel_decoder_ffn_dim": 64,
    "decoder_ffn_dim": 64,
    "train_num_points": 256,
}


def measure(family: str, head: str, size: int, repeats: int) -> dict[str, float]:
    """Build, then time training steps and predictions; memory is peak RSS growth in MiB."""
    from fishertune.models import build_segmentor

    name, extra = FAMILIES[family]
    torch.manual_seed(0)
    model = build_segmentor(
        name,
        head=head,
        num_classes=19,
        img_size=size,
        depth=4,
        embed_dim=32,
        num_heads=2,
        head_options=TINY_M2F if head == "mask2former" else None,
        **extra,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.randn(2, 3, size, size)
    targets = torch.randint(0, 19, (2, size, size))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def train() -> None:
        optimizer.zero_grad()
        losses = model(images, targets)
        assert isinstance(losses, dict)
        torch.autograd.backward(sum(losses.values()))
        optimizer.step()

    steps, predictions = [], []
    for i in range(repeats + 1):
        model.train()
        start = time.perf_counter()
        train()
        if i:
            steps.append(time.perf_counter() - start)
        model.eval()
        start = time.perf_counter()
        model.predict(images)
        if i:
            predictions.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "train_ms": statistics.median(steps) * 1e3,
        "predict_ms": statistics.median(predictions) * 1e3,
        "peak_mib": (peak - base) / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--one", nargs=2, metavar=("FAMILY", "HEAD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], args.one[1], args.size, args.repeats)))
        return
    print(f"tiny segmentors, batch 2 × {args.size}², {torch.get_num_threads()} threads")
    columns = ("params", "train step", "predict", "peak +MiB")
    print(f"{'family':8s} {'head':12s} " + " ".join(f"{c:>10s}" for c in columns))
    for family in FAMILIES:
        for head in ("linear", "mask2former"):
            command = [
                sys.executable,
                __file__,
                "--size",
                str(args.size),
                "--repeats",
                str(args.repeats),
                "--one",
                family,
                head,
            ]
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            print(
                f"{family:8s} {head:12s} {r['params_m']:7.2f}M {r['train_ms']:9.1f}ms "
                f"{r['predict_ms']:7.1f}ms {r['peak_mib']:9.1f}"
            )


if __name__ == "__main__":
    main()
