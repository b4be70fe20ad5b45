"""Label id tables: each dataset's own ids → the 19 Cityscapes train ids (255 = ignore).

A :class:`LabelMap` turns a label image of a dataset's native ids into train ids through a
lookup table. The Cityscapes id → train id table is read from ``cityscapesscripts``' official
label definitions (not retyped here); Synthia's table is the standard 16-class mapping used in
domain-generalized semantic segmentation (DGSS); Mapillary Vistas' table is built by class *name*
from the dataset's own ``config.json``, so it follows the file's label order.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fishertune import label_space as ids
from fishertune.label_space import IGNORE_INDEX, NUM_CLASSES

__all__ = [
    "MAPILLARY_NAME_TO_TRAIN_ID",
    "SYNTHIA_TO_TRAIN_ID",
    "TRAIN_IDS",
    "TRAIN_ID_MAP",
    "LabelConversion",
    "LabelMap",
    "LabelValueError",
    "cityscapes_label_map",
    "mapillary_label_map",
    "synthia_label_map",
    "train_id_to_label_id",
]


SYNTHIA_NUM_IDS = 23
"""Synthia RAND-CITYSCAPES class ids are 0 (void) … 22 (lane marking)."""

SYNTHIA_TO_TRAIN_ID: Mapping[int, int] = {
    3: ids.ROAD,
    4: ids.SIDEWALK,
    2: ids.BUILDING,
    21: ids.WALL,
    5: ids.FENCE,
    7: ids.POLE,
    15: ids.TRAFFIC_LIGHT,
    9: ids.TRAFFIC_SIGN,
    6: ids.VEGETATION,
    1: ids.SKY,
    10: ids.PERSON,  # pedestrian
    17: ids.RIDER,
    8: ids.CAR,
    19: ids.BUS,
    12: ids.MOTORCYCLE,
    11: ids.BICYCLE,
}
"""The 16-class Synthia → Cityscapes mapping; terrain, truck and train are never produced."""

MAPILLARY_NAME_TO_TRAIN_ID: Mapping[str, int] = {
    # road, and the flat surfaces DGSS folds into it
    "construction--flat--road": ids.ROAD,
    "construction--flat--bike-lane": ids.ROAD,
    "construction--flat--service-lane": ids.ROAD,
    "construction--flat--parking": ids.ROAD,
    "construction--flat--crosswalk-plain": ids.ROAD,
    "marking--general": ids.ROAD,
    "marking--crosswalk-zebra": ids.ROAD,
    "marking--discrete--crosswalk-zebra": ids.ROAD,  # the v2.0 spelling of the same class
    "construction--flat--sidewalk": ids.SIDEWALK,
    "construction--flat--pedestrian-area": ids.SIDEWALK,
    "construction--barrier--curb": ids.SIDEWALK,
    "construction--flat--curb-cut": ids.SIDEWALK,
    "construction--structure--building": ids.BUILDING,
    "construction--barrier--wall": ids.WALL,
    "construction--barrier--fence": ids.FENCE,
    "object--support--pole": ids.POLE,
    "object--support--utility-pole": ids.POLE,
    "object--street-light": ids.POLE,
    "object--traffic-light": ids.TRAFFIC_LIGHT,
    "object--traffic-sign--front": ids.TRAFFIC_SIGN,
    "object--traffic-sign--back": ids.TRAFFIC_SIGN,
    "object--support--traffic-sign-frame": ids.TRAFFIC_SIGN,
    "nature--vegetation": ids.VEGETATION,
    "nature--terrain": ids.TERRAIN,
    "nature--sky": ids.SKY,
    "human--person": ids.PERSON,
    "human--rider--bicyclist": ids.RIDER,
    "human--rider--motorcyclist": ids.RIDER,
    "human--rider--other-rider": ids.RIDER,
    "object--vehicle--car": ids.CAR,
    "object--vehicle--truck": ids.TRUCK,
    "object--vehicle--bus": ids.BUS,
    "object--vehicle--on-rails": ids.TRAIN,
    "object--vehicle--motorcycle": ids.MOTORCYCLE,
    "object--vehicle--bicycle": ids.BICYCLE,
}
"""Mapillary Vistas class name → Cityscapes train id; every other class maps to 255.

This is Rein's conversion (its Mapillary → Cityscapes label script), including its choices for
curb cuts (sidewalk), traffic-sign frames (traffic sign) and utility poles (pole), so that the
``rein`` protocol reproduces Rein's numbers."""

TRAIN_IDS: Mapping[int, int] = {**{i: i for i in range(NUM_CLASSES)}, IGNORE_INDEX: IGNORE_INDEX}
"""Identity table for labels already stored as train ids."""


class LabelValueError(ValueError):
    """A label image holds a value its dataset's id table does not define."""


@dataclass(frozen=True)
class LabelMap:
    """A table from a dataset's native label ids to train ids.

    Ids that appear in ``table`` map to its value; any other id maps to :data:`IGNORE_INDEX`,
    or, with ``check=True`` in :meth:`apply`, raises :class:`LabelValueError`.
    """

    name: str
    table: Mapping[int, int]
    _lut: NDArray[np.int64] = field(init=False, repr=False, compare=False)
    _known: NDArray[np.bool_] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if any(key < 0 for key in self.table):
            raise ValueError(f"{self.name}: negative ids cannot appear in a label image")
        # At least 256 entries, so that any uint8 label image indexes the table directly.
        size = max(max(self.table, default=-1) + 1, 256)
        lut = np.full(size, IGNORE_INDEX, dtype=np.int64)
        known = np.zeros(size, dtype=np.bool_)
        for native, train in self.table.items():
            lut[native] = train
            known[native] = True
        object.__setattr__(self, "_lut", lut)
        object.__setattr__(self, "_known", known)

    def unknown_count(self, label: NDArray[Any]) -> int:
        """How many pixels of ``label`` hold an id this table does not define (they would
        train as ignored)."""
        ids = label.astype(np.int64, copy=False)
        inside = (ids >= 0) & (ids < self._lut.size)
        return int(ids.size - self._known[ids[inside]].sum())

    def apply(self, label: NDArray[Any], *, check: bool = False, source: str = "") -> NDArray[Any]:
        """Map an integer array of native ids to an int64 array of train ids.

        ``source`` names the file in the error raised when ``check`` finds an id not in the table.
        """
        if label.dtype == np.uint8 and not check:
            looked_up: NDArray[np.int64] = self._lut[label]  # the common case: one lookup
            return looked_up
        ids = label.astype(np.int64, copy=False)
        inside = (ids >= 0) & (ids < self._lut.size)
        if check:
            known = np.zeros(ids.shape, dtype=np.bool_)
            known[inside] = self._known[ids[inside]]
            if not known.all():
                bad = np.unique(ids[~known]).tolist()
                raise LabelValueError(
                    f"{source or 'label'}: values {bad[:10]} are not in the {self.name} id table"
                )
        out = np.full(ids.shape, IGNORE_INDEX, dtype=np.int64)
        out[inside] = self._lut[ids[inside]]
        return out


TRAIN_ID_MAP = LabelMap("train id", TRAIN_IDS)
"""The identity :class:`LabelMap` of labels already stored as train ids (0–18, 255)."""


@dataclass(frozen=True)
class LabelConversion:
    """Where a data set's native label files lie and the table that maps their ids, for
    ``fishertune data convert`` (which writes ``{stem}_labelTrainIds.png`` beside each file).

    ``folders(root)`` lists the folders under the data set's root that hold the native label
    PNGs; ``label_map(root)`` builds the id table (it may read files under the root, raising
    FileNotFoundError or ValueError naming a missing or malformed one).
    """

    folders: Callable[[Path], Sequence[Path]]
    label_map: Callable[[Path], LabelMap]


def train_id_to_label_id() -> NDArray[np.uint8]:
    """Train id → Cityscapes label id (256 entries; 255 and unused ids → 0, "unlabeled"), for
    predictions in the format of the Cityscapes and ACDC benchmark servers, from
    ``cityscapesscripts``' official table."""
    try:
        from cityscapesscripts.helpers.labels import trainId2label
    except ImportError as error:
        raise ImportError(
            "writing Cityscapes label ids needs the official label table: "
            "pip install cityscapesscripts"
        ) from error
    table = np.zeros(256, dtype=np.uint8)
    for train in range(NUM_CLASSES):
        table[train] = trainId2label[train].id
    return table


@lru_cache(maxsize=1)
def cityscapes_label_map() -> LabelMap:
    """Cityscapes label id → train id, from ``cityscapesscripts.helpers.labels.labels``.

    Every id 0–33 of the official table is known; ids whose train id is 255 or -1 map to 255.
    Raises ImportError (with the install command) when ``cityscapesscripts`` is missing.
    """
    try:
        from cityscapesscripts.helpers.labels import labels
    except ImportError as error:
        raise ImportError(
            "mapping Cityscapes label ids to train ids needs the official label table: "
            "pip install cityscapesscripts"
        ) from error
    table: dict[int, int] = {}
    for label in labels:
        if label.id < 0:
            continue
        train = int(label.trainId)
        table[int(label.id)] = train if 0 <= train < NUM_CLASSES else IGNORE_INDEX
    return LabelMap("Cityscapes label id", table)


def synthia_label_map() -> LabelMap:
    """Synthia RAND-CITYSCAPES ids 0–22 → train ids (:data:`SYNTHIA_TO_TRAIN_ID`, else 255)."""
    table = {i: SYNTHIA_TO_TRAIN_ID.get(i, IGNORE_INDEX) for i in range(SYNTHIA_NUM_IDS)}
    return LabelMap("Synthia id", table)


def mapillary_label_map(config: Path) -> LabelMap:
    """Mapillary Vistas label index → train id, by the class names listed in ``config``.

    ``config`` is the official ``config.json``: ``{"labels": [{"name": ..., "readable": ...},
    ...]}`` in label-index order. Names in :data:`MAPILLARY_NAME_TO_TRAIN_ID` map to their
    train id, every other listed class to 255.
    """
    try:
        document = json.loads(config.read_text(encoding="utf-8"))
        entries: Sequence[Mapping[str, Any]] = document["labels"]
        names = [str(entry["name"]) for entry in entries]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"{config}: not a Mapillary Vistas config (expected a 'labels' list of objects "
            f"with a 'name'): {error}"
        ) from error
    table = {i: MAPILLARY_NAME_TO_TRAIN_ID.get(name, IGNORE_INDEX) for i, name in enumerate(names)}
    return LabelMap("Mapillary Vistas label index", table)
