"""The dataset registry: ``build_dataset(name, root, split=..., **options)``."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from fishertune.data.acdc import ACDC
from fishertune.data.base import SegmentationDataset
from fishertune.data.bdd100k import BDD100K
from fishertune.data.cityscapes import Cityscapes
from fishertune.data.foggy import FoggyDriving, FoggyZurich
from fishertune.data.gtav import GTAV
from fishertune.data.mapillary import MapillaryVistas
from fishertune.data.night import DarkZurich, NighttimeDriving
from fishertune.data.synthia import Synthia

__all__ = ["DATASETS", "build_dataset"]

DATASETS: Mapping[str, type[SegmentationDataset]] = {
    "gtav": GTAV,
    "synthia": Synthia,
    "cityscapes": Cityscapes,
    "bdd100k": BDD100K,
    "mapillary": MapillaryVistas,
    "acdc": ACDC,
    "dark_zurich": DarkZurich,
    "nighttime_driving": NighttimeDriving,
    "foggy_zurich": FoggyZurich,
    "foggy_driving": FoggyDriving,
}
"""Dataset name → class; each class lists its ``splits`` (the first is the default)."""


def build_dataset(
    name: str, root: str | os.PathLike[str], split: str | None = None, **options: Any
) -> SegmentationDataset:
    """Build the dataset ``name`` at ``root``; ``options``: ``transform``, ``check``, and
    ``conditions`` for ACDC."""
    try:
        cls = DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose from {sorted(DATASETS)}") from None
    factory: Callable[..., SegmentationDataset] = cls  # the families share (root, split, ...)
    return factory(root, split, **options)
