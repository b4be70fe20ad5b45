"""Synthia RAND-CITYSCAPES: 9,400 synthetic frames, labels in Synthia's own class ids.

Layout (the official ``RAND_CITYSCAPES`` release)::

    root/RGB/0000000.png
    root/GT/LABELS/0000000.png   # 16-bit PNG: channel 0 = class id, channel 1 = instance id

Pillow reduces 16-bit colour PNGs to 8 bits per channel on load (keeping the high byte), so
:func:`read_synthia_label` decodes the file twice through Pillow's own PNG decoder, once for
the high and once for the low byte of every sample, and combines them. Single-channel label
PNGs (8- or 16-bit grey, palette) are read as they are. DGSS trains on every frame: the only
split is ``"all"``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from fishertune.data.base import (
    DatasetError,
    LabelCandidate,
    Pair,
    TreeDataset,
    pair_by_image,
    per_protocol,
    read_index_png,
)
from fishertune.data.labels import TRAIN_ID_MAP, LabelConversion, synthia_label_map

__all__ = ["Synthia", "read_synthia_label"]

_LOW_BYTE_RAWMODE = {"RGB;16B": "RGB;16L", "RGBA;16B": "RGBA;16L"}
"""Pillow raw modes of big-endian 16-bit colour PNGs → the raw mode keeping each low byte."""


def _decode(path: Path, rawmode: str | None) -> NDArray[np.uint8]:
    """Decode ``path`` with Pillow, optionally overriding the PNG tile's raw mode."""
    try:
        with Image.open(path) as image:
            if rawmode is not None:
                image.tile = [tile._replace(args=rawmode) for tile in image.tile]
            return np.asarray(image, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as error:
        raise DatasetError(f"cannot read image file {path}: {error}") from error


def read_synthia_label(path: Path) -> NDArray[Any]:
    """Read the class ids of a Synthia label PNG: channel 0 of a 16-bit colour PNG."""
    try:
        with Image.open(path) as image:
            rawmodes = {tile.args for tile in image.tile}
            mode = image.mode
    except (OSError, SyntaxError, ValueError) as error:
        raise DatasetError(f"cannot read image file {path}: {error}") from error
    if mode not in ("RGB", "RGBA"):
        return read_index_png(path)
    if len(rawmodes) != 1 or (rawmode := next(iter(rawmodes))) not in _LOW_BYTE_RAWMODE:
        raise DatasetError(f"label file {path} is an 8-bit colour image; expected a 16-bit PNG")
    high = _decode(path, None)[..., 0].astype(np.int64)
    low = _decode(path, _LOW_BYTE_RAWMODE[str(rawmode)])[..., 0].astype(np.int64)
    return high * 256 + low


class Synthia(TreeDataset):
    """Synthia RAND-CITYSCAPES with labels mapped to the 16 shared Cityscapes train ids."""

    splits = ("all",)
    train_split = "all"
    eval_split = "all"
    test_sizes = per_protocol(rein=(1024, 512), fullres=(1024, 512), synthetic=None)
    label_conversion = LabelConversion(
        folders=lambda root: [root / "GT" / "LABELS"], label_map=lambda root: synthia_label_map()
    )

    def find_pairs(self, base: Path) -> list[Pair]:
        label_map = synthia_label_map()

        def candidates(image: Path) -> list[LabelCandidate]:
            folder = base / "GT" / "LABELS"
            return [
                (folder / f"{image.stem}_labelTrainIds.png", lambda: TRAIN_ID_MAP),
                (folder / image.name, lambda: label_map),
            ]

        return pair_by_image(base, "RGB/*.png", candidates)

    @staticmethod
    def read_label(path: Path) -> NDArray[Any]:
        """Read Synthia's 16-bit label PNG (:func:`read_synthia_label`)."""
        return read_synthia_label(path)
