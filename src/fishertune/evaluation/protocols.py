"""Test-time protocols: per-dataset test resolution and whole/slide inference.

Published DGSS numbers depend on the test resolution (Cityscapes at 1024×512 versus
2048×1024 moves mIoU by about 1.8 points), so every result records the protocol it used. The
registered protocols take each data set's test size from its class's declaration
(:attr:`~fishertune.data.base.SegmentationDataset.test_sizes`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from fishertune.data.registry import DATASETS, declared_test_size
from fishertune.data.synthetic import SyntheticSettings

MODES = ("slide", "whole")


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _check_size(size: tuple[int, int], what: str) -> tuple[int, int]:
    pair = tuple(size)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in pair):
        raise ValueError(f"{what} must be a pair of positive ints (W, H), got {size!r}")
    return pair[0], pair[1]


@dataclass(frozen=True)
class EvalProtocol:
    """How test images are sized and run through the model.

    ``test_sizes`` maps a dataset key to its test scale ``(W, H)``; a domain name matches the
    longest key that its normalised form (lower case, separators removed) starts with, so
    ``"GTAV"`` → ``gtav`` and a subset ``"acdc_night"`` → ``acdc``; other names (the source
    domain, the embedded benchmark's styles) get ``default_size``. With ``keep_ratio``
    (mmseg's ``Resize(scale, keep_ratio=True)``) an image is scaled by
    ``min(long/max(h, w), short/min(h, w))`` for the scale's long and short sides, keeping its
    aspect ratio (identical to an exact resize when the ratios agree, e.g. Cityscapes' 2:1 at
    1024×512); without it images are resized to exactly ``(W, H)``. ``mode`` is ``"slide"``
    (``crop`` windows every ``stride`` pixels) or ``"whole"``.
    """

    name: str
    test_sizes: Mapping[str, tuple[int, int]]
    default_size: tuple[int, int]
    mode: str = "slide"
    crop: int = 512
    stride: int = 341
    keep_ratio: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if not 1 <= self.stride <= self.crop:
            raise ValueError(f"need crop >= stride >= 1, got {self.crop} and {self.stride}")
        sizes = {
            _normalise(key): _check_size(size, f"test size of {key!r}")
            for key, size in self.test_sizes.items()
        }
        object.__setattr__(self, "test_sizes", MappingProxyType(sizes))
        object.__setattr__(self, "default_size", _check_size(self.default_size, "default_size"))

    def size_for(self, dataset: str) -> tuple[int, int]:
        """The test scale ``(W, H)`` of ``dataset`` (see the class docstring for matching)."""
        name = _normalise(dataset)
        keys = [key for key in self.test_sizes if name.startswith(key)]
        return self.test_sizes[max(keys, key=len)] if keys else self.default_size

    def resized_shape(self, dataset: str, height: int, width: int) -> tuple[int, int]:
        """The ``(H, W)`` an image of ``height × width`` from ``dataset`` is resized to."""
        scale_w, scale_h = self.size_for(dataset)
        if not self.keep_ratio:
            return scale_h, scale_w
        factor = min(
            max(scale_w, scale_h) / max(height, width), min(scale_w, scale_h) / min(height, width)
        )
        return int(height * factor + 0.5), int(width * factor + 0.5)

    def with_mode(self, mode: str) -> EvalProtocol:
        """The same protocol with ``mode`` ("slide" or "whole") instead."""
        return dataclasses.replace(self, mode=mode)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record of every setting."""
        return {
            "name": self.name,
            "test_sizes": {key: list(size) for key, size in self.test_sizes.items()},
            "default_size": list(self.default_size),
            "mode": self.mode,
            "crop": self.crop,
            "stride": self.stride,
            "keep_ratio": self.keep_ratio,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalProtocol:
        """Inverse of :meth:`to_dict`."""
        return cls(
            str(data["name"]),
            {str(key): (int(size[0]), int(size[1])) for key, size in data["test_sizes"].items()},
            (int(data["default_size"][0]), int(data["default_size"][1])),
            mode=str(data["mode"]),
            crop=int(data["crop"]),
            stride=int(data["stride"]),
            keep_ratio=bool(data["keep_ratio"]),
        )


def _declared(protocol: str) -> dict[str, tuple[int, int]]:
    """The test size every registered data set declares under ``protocol``, leaving out those
    that declare the protocol's default size."""
    sizes = {name: declared_test_size(name, protocol) for name in DATASETS}
    return {name: size for name, size in sizes.items() if size is not None}


PROTOCOLS: Mapping[str, EvalProtocol] = MappingProxyType(
    {
        "rein": EvalProtocol("rein", _declared("rein"), default_size=(1024, 512)),
        "fullres": EvalProtocol("fullres", _declared("fullres"), default_size=(1024, 512)),
        "synthetic": EvalProtocol(
            "synthetic",
            _declared("synthetic"),
            default_size=SyntheticSettings().test_size,
            mode="whole",
            crop=128,
            stride=128,
        ),
    }
)
"""``rein``: Rein's mmseg test pipelines (Cityscapes/Mapillary 1024×512, BDD100K/GTAV
1280×720, ACDC 960×540, slide 512/341). ``fullres``: the same but Cityscapes at 2048×1024, as
tqdm and SoMA evaluate it. ``synthetic``: the embedded benchmark, whole images at 128×256; a run
at another ``data.synthetic_size`` uses that size instead (``dataclasses.replace``). Every
data set declares its size under each (``tests/test_dataset_declarations.py`` checks)."""


def get_protocol(name: str) -> EvalProtocol:
    """The registered protocol ``name``; ValueError listing the known ones otherwise."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ValueError(
            f"unknown evaluation protocol {name!r}; known: {', '.join(sorted(PROTOCOLS))}"
        ) from None
