"""Mapillary Vistas v1.2 (18,000 training / 2,000 validation images, 66 classes).

Layout (the official v1.2 release)::

    root/config.json                      # the 66 labels in index order ("name", "readable", ...)
    root/{split}/images/{key}.jpg         # split: "training" or "validation"
    root/{split}/labels/{key}.png         # palette PNG: the palette index is the label index

Label indices map to train ids by class name (:func:`~fishertune.data.labels.mapillary_label_map`).
"""

from __future__ import annotations

from pathlib import Path

from fishertune.data.base import LabelCandidate, Pair, TreeDataset, pair_by_image, per_protocol
from fishertune.data.labels import TRAIN_ID_MAP, LabelConversion, LabelMap, mapillary_label_map

__all__ = ["MapillaryVistas"]


def _label_map(root: Path) -> LabelMap:
    """The id table of the tree at ``root``, from its ``config.json``."""
    config = root / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"Mapillary Vistas config {config} not found")
    return mapillary_label_map(config)


class MapillaryVistas(TreeDataset):
    """Mapillary Vistas v1.2 images with labels mapped to Cityscapes train ids by name."""

    splits = ("validation", "training")
    train_split = "training"
    eval_split = "validation"
    test_sizes = per_protocol(rein=(1024, 512), fullres=(1024, 512), synthetic=None)
    label_conversion = LabelConversion(
        folders=lambda root: [root / split / "labels" for split in MapillaryVistas.splits],
        label_map=_label_map,
    )

    def find_pairs(self, base: Path) -> list[Pair]:
        label_map = _label_map(base)
        labels = base / self.split / "labels"

        def candidates(image: Path) -> list[LabelCandidate]:
            return [
                (labels / f"{image.stem}_labelTrainIds.png", lambda: TRAIN_ID_MAP),
                (labels / f"{image.stem}.png", lambda: label_map),
            ]

        pattern = f"{self.split}/images/*.jpg"
        return pair_by_image(base, pattern, candidates)
