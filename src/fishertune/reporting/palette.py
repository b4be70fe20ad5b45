"""Cityscapes colours: colourised label maps, image overlays and the class legend."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.patches import Patch
from numpy.typing import ArrayLike, NDArray
from torch import Tensor

from fishertune.label_space import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    IGNORE_COLOR,
    IGNORE_INDEX,
)

# Row ``i < 19`` is train id ``i``; the extra last row is the ignore colour.
_LOOKUP = np.array([*CITYSCAPES_PALETTE, IGNORE_COLOR], dtype=np.uint8)


def _as_array(value: Tensor | ArrayLike) -> NDArray[Any]:
    if isinstance(value, Tensor):
        return np.asarray(value.detach().cpu().numpy())
    return np.asarray(value)


def train_ids(label: Tensor | ArrayLike) -> NDArray[np.int64]:
    """``label`` (tensor or array) as an ``(H, W)`` int64 array of train ids in [0, 19) or 255.

    Raises ValueError for another shape or a value outside those (naming it), TypeError for a
    non-integer dtype.
    """
    ids = _as_array(label)
    if ids.ndim != 2:
        raise ValueError(f"label must be (H, W), got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"label must hold integer train ids, got dtype {ids.dtype}")
    ids_int: NDArray[np.int64] = ids.astype(np.int64)
    bad = (ids_int != IGNORE_INDEX) & ((ids_int < 0) | (ids_int >= len(CITYSCAPES_PALETTE)))
    if bad.any():
        value = int(ids_int[bad][0])
        raise ValueError(
            f"label contains train id {value}; expected [0, {len(CITYSCAPES_PALETTE)}) "
            f"or the ignore index {IGNORE_INDEX}"
        )
    return ids_int


def colorize(label: Tensor | ArrayLike) -> NDArray[np.uint8]:
    """The ``(H, W, 3)`` uint8 colour image of an ``(H, W)`` map of train ids.

    Train id ``i`` gets ``CITYSCAPES_PALETTE[i]`` and 255 black; any other value raises a
    ValueError naming it. ``label`` is a tensor (any device) or an array.
    """
    ids = train_ids(label)
    rows = np.where(ids == IGNORE_INDEX, len(CITYSCAPES_PALETTE), ids)
    return _LOOKUP[rows]


def overlay(
    image: Tensor | ArrayLike, label: Tensor | ArrayLike, alpha: float = 0.5
) -> NDArray[np.uint8]:
    """Blend an RGB uint8 ``(H, W, 3)`` image with the colourised ``(H, W)`` label.

    Each labelled pixel becomes ``round((1 - alpha) * image + alpha * colour)``; ignored pixels
    (255) keep the image. ``alpha`` is in [0, 1].
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = _as_array(image)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")
    ids = train_ids(label)
    if ids.shape != rgb.shape[:2]:
        raise ValueError(f"label shape {ids.shape} does not match image shape {rgb.shape[:2]}")
    blended = (1.0 - alpha) * rgb.astype(np.float64) + alpha * colorize(ids).astype(np.float64)
    out = np.where((ids == IGNORE_INDEX)[..., None], rgb, np.rint(blended).astype(np.uint8))
    return out.astype(np.uint8)


def legend_handles(class_names: Sequence[str] = CITYSCAPES_CLASSES) -> list[Patch]:
    """One coloured matplotlib patch per class, for ``Figure.legend(handles=...)``."""
    if len(class_names) > len(CITYSCAPES_PALETTE):
        raise ValueError(
            f"{len(class_names)} class names but only {len(CITYSCAPES_PALETTE)} palette colours"
        )
    return [
        Patch(facecolor="#{:02x}{:02x}{:02x}".format(*colour), edgecolor="none", label=name)
        for name, colour in zip(class_names, CITYSCAPES_PALETTE, strict=False)
    ]
