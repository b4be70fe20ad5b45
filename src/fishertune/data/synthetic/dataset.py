"""``SyntheticStreets``: a procedural domain-generalisation benchmark as a torch Dataset.

Item ``i`` of a split is rendered on the fly from a seed derived from ``(seed, split, i)``:
the layout depends only on that seed, the style's own randomness on the seed and the style,
so the same scene appears with the same label in every style and the same arguments always
give the same tensors. Rendered items are kept in a process-wide cache of at most
:data:`CACHE_BYTES` (least recently used first out), so runs that revisit the same scenes,
such as several methods trained and evaluated in one process, render each scene once.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from fishertune.data.base import SegmentationDataset, Transform, per_protocol
from fishertune.data.synthetic.scenes import IMAGE_SIZE, Scene, generate_scene
from fishertune.data.synthetic.styles import STYLES, render_style

__all__ = [
    "SPLIT_LENGTH",
    "SyntheticSettings",
    "SyntheticStreets",
    "render_sample",
    "render_styles",
    "scene_seed",
]

CACHE_BYTES = 256 << 20
"""Budget of the process-wide cache of rendered items (images and uint8 labels)."""

SPLIT_LENGTH = 500
"""Scenes generated for a split when no count is given."""


@dataclass(frozen=True)
class SyntheticSettings:
    """Which scenes the benchmark generates (``seed``) and at what ``size`` ``(H, W)``: a run's
    ``data.synthetic_seed`` and ``data.synthetic_size``."""

    size: tuple[int, int] = IMAGE_SIZE
    seed: int = 0

    @property
    def test_size(self) -> tuple[int, int]:
        """The images' size as a test scale ``(W, H)``."""
        height, width = self.size
        return width, height


_cache: OrderedDict[tuple[int, str, tuple[int, int]], tuple[NDArray[np.uint8], NDArray[np.uint8]]]
_cache = OrderedDict()
_cache_bytes = 0


def _code(name: str) -> int:
    """A stable integer for a split or style name."""
    return zlib.crc32(name.encode("utf-8"))


def scene_seed(seed: int, split: str, index: int) -> int:
    """The scene seed of item ``index`` of ``split`` in a benchmark seeded with ``seed``."""
    state = np.random.SeedSequence((seed, _code(split), index)).generate_state(2, np.uint32)
    return int(state[0]) << 32 | int(state[1])


def _scene(seed: int, size: tuple[int, int]) -> Scene:
    """The layout generated from a scene seed."""
    return generate_scene(np.random.default_rng(np.random.SeedSequence((seed, 0))), size)


def _style_rng(seed: int, style: str) -> np.random.Generator:
    """The generator driving ``style``'s randomness for a scene seed."""
    return np.random.default_rng(np.random.SeedSequence((seed, 1, _code(style))))


def render_sample(
    seed: int, style: str, size: tuple[int, int] = IMAGE_SIZE
) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    """Render scene ``seed`` in ``style``: an (H, W, 3) uint8 image and (H, W) train ids."""
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; choose from {STYLES}")
    scene = _scene(seed, size)
    return render_style(scene, style, _style_rng(seed, style)), scene.label


def _cached_sample(
    seed: int, style: str, size: tuple[int, int]
) -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
    """:func:`render_sample` through the process-wide cache (labels stored as uint8)."""
    global _cache_bytes
    key = (seed, style, size)
    item = _cache.get(key)
    if item is not None:
        _cache.move_to_end(key)
        return item
    rgb, ids = render_sample(seed, style, size)
    item = (rgb, ids.astype(np.uint8))
    _cache[key] = item
    _cache_bytes += rgb.nbytes + item[1].nbytes
    while _cache_bytes > CACHE_BYTES and len(_cache) > 1:
        _, (old_rgb, old_ids) = _cache.popitem(last=False)
        _cache_bytes -= old_rgb.nbytes + old_ids.nbytes
    return item


def render_styles(
    seed: int, size: tuple[int, int] = IMAGE_SIZE
) -> tuple[dict[str, NDArray[np.uint8]], NDArray[np.int64]]:
    """Render one scene in every style: ``({style: (H, W, 3) uint8}, (H, W) train ids)``."""
    scene = _scene(seed, size)
    images = {style: render_style(scene, style, _style_rng(seed, style)) for style in STYLES}
    return images, scene.label


class SyntheticStreets(SegmentationDataset):
    """Procedural street scenes in one rendering style (domain), generated on the fly.

    ``style`` is one of :data:`~fishertune.data.synthetic.styles.STYLES` (``"source"`` is the
    labelled training domain). Items are ``(uint8 (3, H, W), int64 (H, W) train ids)`` like
    every :class:`~fishertune.data.base.SegmentationDataset`, passed through ``transform``.
    The styles are the data set's :attr:`domains`; its images are tested at their own size
    under every protocol (a run on it uses that size as the protocol's default size).
    """

    splits = ("train", "val", "test")
    train_split = "train"
    eval_split = "val"
    test_sizes = per_protocol(rein=None, fullres=None, synthetic=None)
    label_conversion = None  # generated as train ids
    domains = STYLES

    def __init__(
        self,
        split: str,
        style: str,
        *,
        size: tuple[int, int] = IMAGE_SIZE,
        length: int = SPLIT_LENGTH,
        seed: int = 0,
        transform: Transform | None = None,
    ) -> None:
        if style not in STYLES:
            raise ValueError(f"unknown style {style!r}; choose from {STYLES}")
        if length < 0:
            raise ValueError(f"length must be non-negative, got {length}")
        super().__init__([], transform=transform)
        self.split = self.resolve_split(split)
        self.style = style
        self.size = size
        self.length = length
        self.seed = seed

    def __len__(self) -> int:
        return self.length

    def prepare(self) -> None:
        """Render every item into the process-wide cache (within its budget), so that a run's
        stage clocks measure training, not rendering."""
        for index in range(self.length):
            _cached_sample(scene_seed(self.seed, self.split, index), self.style, self.size)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} items")
        index %= self.length
        rgb, ids = _cached_sample(scene_seed(self.seed, self.split, index), self.style, self.size)
        image = torch.from_numpy(rgb.copy()).permute(2, 0, 1)
        label = torch.from_numpy(ids.astype(np.int64))
        if self.transform is not None:
            image, label = self.transform(image, label)
        return image, label
