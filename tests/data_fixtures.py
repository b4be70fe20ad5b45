"""Tiny dataset trees in the official layouts, file names and formats, for the loader tests.

Each ``build_*`` writes a handful of 8×16 samples under ``root`` and returns the image paths.
Every label holds ``ids`` repeated column by column (:func:`id_pattern`), so a test knows which
native id sits in which column. 16-bit Synthia PNGs are encoded here by hand (Pillow cannot
write them), cycling through all five PNG row filters.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image

H, W = 8, 16


def id_pattern(ids: Sequence[int]) -> NDArray[np.int64]:
    """An (H, W) array whose column ``c`` holds ``ids[c % len(ids)]``."""
    row = np.array([ids[c % len(ids)] for c in range(W)], dtype=np.int64)
    return np.tile(row, (H, 1))


def write_image(path: Path, seed: int = 0, size: tuple[int, int] = (H, W)) -> Path:
    """A random RGB image; the format (PNG or JPEG) follows the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def write_palette_png(path: Path, ids: NDArray[np.int64]) -> Path:
    """A palette ("P") PNG whose palette index is the id (GTAV, Mapillary)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.frombytes("P", (ids.shape[1], ids.shape[0]), ids.astype(np.uint8).tobytes())
    image.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    image.save(path)
    return path


def write_grey_png(path: Path, ids: NDArray[np.int64]) -> Path:
    """An 8-bit grey PNG of ids (Cityscapes-style ``*_labelIds`` / ``*_labelTrainIds``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.frombytes("L", (ids.shape[1], ids.shape[0]), ids.astype(np.uint8).tobytes()).save(path)
    return path


def _paeth(
    left: NDArray[np.int64], up: NDArray[np.int64], corner: NDArray[np.int64]
) -> NDArray[np.int64]:
    estimate = left + up - corner
    to_left, to_up, to_corner = (np.abs(estimate - v) for v in (left, up, corner))
    return np.where(
        (to_left <= to_up) & (to_left <= to_corner), left, np.where(to_up <= to_corner, up, corner)
    )


def write_png16(path: Path, channels: NDArray[np.int64]) -> Path:
    """A 16-bit-per-sample RGB or RGBA PNG of ``channels`` (H, W, 3 or 4)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width, depth = channels.shape
    data = channels.astype(">u2").reshape(height, width * depth).view(np.uint8).astype(np.int64)
    bpp = 2 * depth
    rows = []
    previous = np.zeros(data.shape[1], dtype=np.int64)
    for r in range(height):
        raw = data[r]
        left = np.concatenate([np.zeros(bpp, dtype=np.int64), raw[:-bpp]])
        corner = np.concatenate([np.zeros(bpp, dtype=np.int64), previous[:-bpp]])
        kind = r % 5
        predictor = [
            np.zeros_like(raw),
            left,
            previous,
            (left + previous) // 2,
            _paeth(left, previous, corner),
        ][kind]
        rows.append(bytes([kind]) + ((raw - predictor) % 256).astype(np.uint8).tobytes())
        previous = raw

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    colour_type = {3: 2, 4: 6}[depth]
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"".join(rows)))
        + chunk(b"IEND", b"")
    )
    return path


def build_gtav(
    root: Path, ids: Sequence[int], n: int = 3, train_ids: Sequence[int] | None = None
) -> list[Path]:
    """``images/00001.png`` … with palette ``labels/00001.png`` (+ ``train_ids`` in
    ``labels/00001_labelTrainIds.png`` when given)."""
    images = []
    for i in range(1, n + 1):
        images.append(write_image(root / "images" / f"{i:05d}.png", seed=i))
        write_palette_png(root / "labels" / f"{i:05d}.png", id_pattern(ids))
        if train_ids is not None:
            write_grey_png(root / "labels" / f"{i:05d}_labelTrainIds.png", id_pattern(train_ids))
    return images


def build_synthia(root: Path, ids: Sequence[int], n: int = 2) -> list[Path]:
    """``RGB/0000000.png`` … with 16-bit ``GT/LABELS/0000000.png`` (class id, instance id, 0)."""
    images = []
    for i in range(n):
        images.append(write_image(root / "RGB" / f"{i:07d}.png", seed=i))
        classes = id_pattern(ids)
        instances = np.arange(H * W, dtype=np.int64).reshape(H, W) * 300 % 65536
        write_png16(
            root / "GT" / "LABELS" / f"{i:07d}.png",
            np.stack([classes, instances, np.zeros_like(classes)], axis=-1),
        )
    return images


def build_cityscapes(root: Path, split: str, ids: Sequence[int], kind: str) -> list[Path]:
    """Two cities of ``leftImg8bit`` images with ``gtFine`` ``*_gtFine_{kind}.png`` labels."""
    images = []
    for city, frame in (("aachen", 19), ("bremen", 42), ("bremen", 43)):
        prefix = f"{city}_000000_{frame:06d}"
        images.append(
            write_image(root / "leftImg8bit" / split / city / f"{prefix}_leftImg8bit.png")
        )
        write_grey_png(
            root / "gtFine" / split / city / f"{prefix}_gtFine_{kind}.png", id_pattern(ids)
        )
    return images


def build_bdd100k(root: Path, split: str, ids: Sequence[int]) -> list[Path]:
    """``images/10k/{split}/*.jpg`` with ``labels/sem_seg/masks/{split}/*.png``."""
    images = []
    for i, name in enumerate(("7d2f7975-e0c1c5a7", "7d4a9094-0455564b")):
        images.append(write_image(root / "images" / "10k" / split / f"{name}.jpg", seed=i))
        write_grey_png(
            root / "labels" / "sem_seg" / "masks" / split / f"{name}.png", id_pattern(ids)
        )
    return images


def build_mapillary(root: Path, split: str, names: Sequence[str], ids: Sequence[int]) -> list[Path]:
    """``config.json`` listing ``names`` and ``{split}/images/*.jpg`` + palette labels."""
    root.mkdir(parents=True, exist_ok=True)
    labels = [
        {
            "color": [i, i, i],
            "instances": False,
            "readable": name.split("--")[-1].title(),
            "name": name,
            "evaluate": True,
        }
        for i, name in enumerate(names)
    ]
    (root / "config.json").write_text(json.dumps({"labels": labels, "version": 1.2}))
    images = []
    for i, key in enumerate(("--2ABcd3eFg4hij", "-0AbCdEfGh1iJk")):
        images.append(write_image(root / split / "images" / f"{key}.jpg", seed=i))
        write_palette_png(root / split / "labels" / f"{key}.png", id_pattern(ids))
    return images


def build_acdc(root: Path, conditions: Sequence[str], split: str, ids: Sequence[int]) -> list[Path]:
    """``rgb_anon/{condition}/{split}/GOPR0475/*_rgb_anon.png`` + ``gt/…_gt_labelTrainIds.png``."""
    images = []
    for condition in conditions:
        for frame in (53, 54):
            name = f"GOPR0475_frame_{frame:06d}"
            folder = Path(condition) / split / "GOPR0475"
            images.append(write_image(root / "rgb_anon" / folder / f"{name}_rgb_anon.png"))
            write_grey_png(root / "gt" / folder / f"{name}_gt_labelTrainIds.png", id_pattern(ids))
    return images


def build_dark_zurich(root: Path, ids: Sequence[int]) -> list[Path]:
    """``rgb_anon/val/night/GOPR0356/*_rgb_anon.png`` + ``gt/…_gt_labelTrainIds.png``."""
    images = []
    for frame in (321, 322):
        name = f"GOPR0356_frame_{frame:06d}"
        folder = Path("val") / "night" / "GOPR0356"
        images.append(write_image(root / "rgb_anon" / folder / f"{name}_rgb_anon.png"))
        write_grey_png(root / "gt" / folder / f"{name}_gt_labelTrainIds.png", id_pattern(ids))
    return images


def build_nighttime_driving(root: Path, ids: Sequence[int]) -> list[Path]:
    """``leftImg8bit/test/night/*`` + ``gtCoarse_daytime_trainvaltest/test/night/*``."""
    images = []
    for frame in (1, 2):
        name = f"0_frame_{frame:04d}"
        images.append(write_image(root / "leftImg8bit/test/night" / f"{name}_leftImg8bit.png"))
        labels = root / "gtCoarse_daytime_trainvaltest/test/night"
        write_grey_png(labels / f"{name}_gtCoarse_labelTrainIds.png", id_pattern(ids))
    return images


def build_foggy_zurich(root: Path, ids: Sequence[int], unlabelled: int = 2) -> list[Path]:
    """``RGB/GP010xxx/*.png`` (some unlabelled) + ``gt_labelTrainIds/test/GP010xxx/*.png``."""
    images = []
    for i, name in enumerate(
        ("1508039851_start_01650_frame_000315", "1508039851_start_01650_frame_000316")
    ):
        images.append(write_image(root / "RGB" / "GP010475" / f"{name}.png", seed=i))
        write_grey_png(
            root / "gt_labelTrainIds" / "test" / "GP010475" / f"{name}.png", id_pattern(ids)
        )
    for i in range(unlabelled):
        write_image(root / "RGB" / "GP010476" / f"unlabelled_{i}.png", seed=10 + i)
    return images


def build_foggy_driving(root: Path, ids: Sequence[int]) -> list[Path]:
    """``leftImg8bit/test/{pedestrian,public}/*``: fine (pedestrian) and coarse (public) labels."""
    images = []
    for group, label_dir, kind in (
        ("pedestrian", "gtFine", "gtFine"),
        ("public", "gtCoarse", "gtCoarse"),
    ):
        name = f"{group}_frame_0001"
        images.append(write_image(root / "leftImg8bit/test" / group / f"{name}_leftImg8bit.png"))
        labels = root / label_dir / "test" / group
        write_grey_png(labels / f"{name}_{kind}_labelTrainIds.png", id_pattern(ids))
    return images
