"""GTAV loading throughput: PNG decoding + id mapping + the full training transform.

Writes ``--n`` GTAV-sized pairs (1914×1052 RGB PNG, palette PNG label of Cityscapes ids) into a
temporary directory in the official layout (``images/00001.png``, ``labels/00001.png``), then
measures images/s through :class:`~fishertune.data.gtav.GTAV` with
:func:`~fishertune.data.transforms.train_transform` in a ``DataLoader``:

- ``num_workers=0``: in-process with one torch thread, i.e. the rate of one worker core;
- ``num_workers=2``: two worker processes, reported in total and per worker.

It first prints a per-stage profile (median ms per image, in-process). Target (issue):
≥ 10 images/s per worker core. The synthetic images are smooth colour fields plus noise: their
PNGs (~3 MiB) are a little larger, so slower to decode, than real GTAV frames (~2.3 MB on
average), not trivially compressible.

    .venv/bin/python benchmarks/loader_throughput.py          # about a minute on 2 CPU cores
    .venv/bin/python benchmarks/loader_throughput.py --n 8 --epochs 1
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from fishertune.data.base import read_index_png, read_rgb
from fishertune.data.gtav import GTAV
from fishertune.data.transforms import train_transform

WIDTH, HEIGHT = 1914, 1052
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CITYSCAPES_IDS = (0, 7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)


def write_pairs(root: Path, n: int, seed: int = 0) -> None:
    """Write ``n`` GTAV-sized image/label PNG pairs under ``root`` in the official layout."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    palette = rng.integers(0, 256, 256 * 3, dtype=np.uint8).tolist()
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    for i in range(1, n + 1):
        phase = rng.uniform(0, 2 * np.pi, 3)
        smooth = np.stack(
            [np.sin(xs / 170 + ys / 90 + p) for p in phase], axis=-1
        )  # (H, W, 3) in [-1, 1]
        noise = rng.normal(0, 3, (HEIGHT, WIDTH, 3))
        rgb = np.clip(128 + 100 * smooth + noise, 0, 255).astype(np.uint8)
        Image.fromarray(rgb).save(root / "images" / f"{i:05d}.png")
        blocks = rng.choice(CITYSCAPES_IDS, (HEIGHT // 64 + 1, WIDTH // 64 + 1))
        ids = blocks.repeat(64, 0).repeat(64, 1)[:HEIGHT, :WIDTH].astype(np.uint8)
        label = Image.fromarray(ids, mode="P")
        label.putpalette(palette)
        label.save(root / "labels" / f"{i:05d}.png")


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median milliseconds of ``fn`` over ``repeats`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def profile(dataset: GTAV, repeats: int) -> None:
    """Print the median per-image cost of each loading stage, in-process."""
    pair = dataset.pairs[0]
    rgb = read_rgb(pair.image)
    ids = read_index_png(pair.label)
    image = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
    label = torch.from_numpy(pair.label_map.apply(ids))
    transform = train_transform(MEAN, STD, generator=torch.Generator().manual_seed(0))
    stages: list[tuple[str, Callable[[], object]]] = [
        ("read image PNG (Pillow)", lambda: read_rgb(pair.image)),
        ("read label PNG (palette indices)", lambda: read_index_png(pair.label)),
        ("map ids → train ids", lambda: pair.label_map.apply(ids)),
        ("train transform", lambda: transform(image, label)),
        ("whole item (dataset[i])", lambda: dataset[0]),
    ]
    print("per-stage profile (median ms per image, 1 thread):")
    for name, fn in stages:
        print(f"  {name:34s} {median_ms(fn, repeats):7.1f}")


def throughput(dataset: GTAV, workers: int, epochs: int, batch: int, seed: int) -> float:
    """Images/s over ``epochs`` passes after one warm-up pass (worker start-up excluded)."""
    loader = DataLoader(
        dataset,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )
    for _ in loader:
        pass
    start = time.perf_counter()
    count = 0
    for _ in range(epochs):
        for images, _labels in loader:
            count += images.shape[0]
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=16, help="image/label pairs to write")
    parser.add_argument("--epochs", type=int, default=2, help="timed passes per setting")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5, help="profile repeats per stage")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)  # what each DataLoader worker uses
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        write_pairs(root, args.n, args.seed)
        size = sum(path.stat().st_size for path in (root / "images").iterdir()) / args.n
        print(
            f"wrote {args.n} pairs of {WIDTH}x{HEIGHT} in {time.perf_counter() - start:.1f}s "
            f"(image PNG {size / 2**20:.1f} MiB each)"
        )
        dataset = GTAV(root, transform=train_transform(MEAN, STD))
        profile(dataset, args.repeats)
        print("DataLoader throughput (target >= 10 images/s per worker core):")
        for workers in args.workers:
            rate = throughput(dataset, workers, args.epochs, args.batch, args.seed)
            per_worker = rate / max(workers, 1)
            print(
                f"  num_workers={workers}: {rate:6.1f} images/s total, "
                f"{per_worker:6.1f} images/s per worker"
            )


if __name__ == "__main__":
    main()
