"""The data set registry: every data set by name, what it declares, and how to open it.

Adding a data set is one module (a class declaring what :class:`~fishertune.data.base.
SegmentationDataset` asks for) and one line in :data:`DATASETS`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from torch.utils.data import Subset

from fishertune.data.acdc import ACDC
from fishertune.data.base import LabelledImages, SegmentationDataset, TestSize, TreeDataset
from fishertune.data.bdd100k import BDD100K
from fishertune.data.cityscapes import Cityscapes
from fishertune.data.foggy import FoggyDriving, FoggyZurich
from fishertune.data.gtav import GTAV
from fishertune.data.mapillary import MapillaryVistas
from fishertune.data.night import DarkZurich, NighttimeDriving
from fishertune.data.synthetic import SPLIT_LENGTH, SyntheticSettings, SyntheticStreets
from fishertune.data.synthia import Synthia

__all__ = [
    "DATASETS",
    "FILE_DATASETS",
    "TRAINABLE_DATASETS",
    "build_dataset",
    "dataset_class",
    "declared_test_size",
    "file_dataset_class",
    "open_dataset",
]

DATASETS: Mapping[str, type[SegmentationDataset]] = {
    "synthetic": SyntheticStreets,
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
"""Data set name → class: the embedded benchmark first, then the data sets read from files."""

FILE_DATASETS: tuple[str, ...] = tuple(
    name for name, cls in DATASETS.items() if issubclass(cls, TreeDataset)
)
"""The registered data sets read from a root directory (all but the generated benchmark)."""

TRAINABLE_DATASETS: tuple[str, ...] = tuple(
    name for name, cls in DATASETS.items() if cls.train_split is not None
)
"""The registered data sets a run can train on (those declaring a training split)."""


def dataset_class(name: str) -> type[SegmentationDataset]:
    """The class registered as ``name``; ValueError listing the registered names otherwise."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose from {list(DATASETS)}") from None


def file_dataset_class(name: str) -> type[TreeDataset]:
    """The class of the data set ``name`` read from files; ValueError naming the data sets with
    files for an unknown name or the generated benchmark."""
    cls = DATASETS.get(name)
    if cls is None:
        raise ValueError(f"unknown dataset {name!r}; choose from {list(FILE_DATASETS)}")
    if not issubclass(cls, TreeDataset):
        raise ValueError(
            f"dataset {name!r} is generated, not read from files; the data sets with files are "
            f"{list(FILE_DATASETS)}"
        )
    return cls


def build_dataset(
    name: str, root: str | os.PathLike[str], split: str | None = None, **options: Any
) -> TreeDataset:
    """Read the data set ``name`` from ``root``; ``options``: ``transform``, ``check``, and
    ``conditions`` for ACDC. ValueError for a name that is not read from files."""
    # the families share (root, split, ...)
    factory: Callable[..., TreeDataset] = file_dataset_class(name)
    return factory(root, split, **options)


def declared_test_size(name: str, protocol: str) -> TestSize:
    """The test scale ``(W, H)`` the data set ``name`` declares under ``protocol`` (``None``: the
    protocol's default size); ValueError naming both when the data set declares none."""
    sizes = dataset_class(name).test_sizes
    if protocol not in sizes:
        raise ValueError(
            f"dataset {name!r} declares no test size for protocol {protocol!r} "
            f"(it declares {sorted(sizes)})"
        )
    return sizes[protocol]


def open_dataset(
    name: str,
    split: str,
    *,
    root: str | os.PathLike[str] | None = None,
    domain: str | None = None,
    limit: int | None = None,
    synthetic: SyntheticSettings | None = None,
) -> LabelledImages:
    """The first ``limit`` items (all for ``None``) of ``split`` of the data set ``name``.

    A data set read from files needs its ``root``. The generated benchmark is generated with
    the ``synthetic`` settings (default: the benchmark's defaults), in ``domain`` (one of its
    styles; default: its training domain), ``limit`` scenes (default
    :data:`~fishertune.data.synthetic.SPLIT_LENGTH`). Items are untransformed. ValueError for
    an unknown name, split or domain, or a missing root.
    """
    cls = dataset_class(name)
    if domain is not None and domain not in cls.domains:
        raise ValueError(
            f"dataset {name!r} has no domain {domain!r}"
            + (f"; choose from {cls.domains}" if cls.domains else " (it is one domain)")
        )
    if issubclass(cls, SyntheticStreets):
        settings = synthetic or SyntheticSettings()
        return cls(
            split,
            domain or cls.domains[0],
            size=settings.size,
            length=SPLIT_LENGTH if limit is None else limit,
            seed=settings.seed,
        )
    if root is None:
        raise ValueError(f"dataset {name!r} is read from files: it needs its root directory")
    dataset = build_dataset(name, root, split)
    if limit is None or limit >= len(dataset):
        return dataset
    return Subset(dataset, range(limit))
