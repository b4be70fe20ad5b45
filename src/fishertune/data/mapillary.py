"""Mapillary Vistas v1.2 (18,000 training / 2,000 validation images, 66 classes).

Layout (the official v1.2 release)::

    root/config.json                      # the 66 labels in index order ("name", "readable", ...)
    root/{split}/images/{key}.jpg         # split: "training" or "validation"
    root/{split}/labels/{key}.png         # palette PNG: the palette index is the label index

Label indices map to train ids by class name (:func:`~fishertune.data.labels.mapillary_label_map`).
"""

from __future__ import annotations

from pathlib import Path

from fishertune.data.base import LabelCandidate, Pair, TreeDataset, pair_by_image
from fishertune.data.labels import TRAIN_ID_MAP, mapillary_label_map

__all__ = ["MapillaryVistas"]


class MapillaryVistas(TreeDataset):
    """Mapillary Vistas v1.2 images with labels mapped to Cityscapes train ids by name."""

    splits = ("validation", "training")

    def find_pairs(self, base: Path) -> list[Pair]:
        config = base / "config.json"
        if not config.is_file():
            raise FileNotFoundError(f"Mapillary Vistas config {config} not found")
        label_map = mapillary_label_map(config)
        labels = base / self.split / "labels"

        def candidates(image: Path) -> list[LabelCandidate]:
            return [
                (labels / f"{image.stem}_labelTrainIds.png", lambda: TRAIN_ID_MAP),
                (labels / f"{image.stem}.png", lambda: label_map),
            ]

        pattern = f"{self.split}/images/*.jpg"
        return pair_by_image(base, pattern, candidates)
