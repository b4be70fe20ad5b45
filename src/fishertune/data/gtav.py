"""GTAV (Playing for Data): 24,966 synthetic frames with Cityscapes-id labels.

Layout (the official release, unpacked into one root)::

    root/images/00001.png
    root/labels/00001.png                 # palette PNG: the palette index is the Cityscapes id
    root/labels/00001_labelTrainIds.png   # optional converted train ids, preferred when present

DGSS trains on every frame, so the only split is ``"all"``.
"""

from __future__ import annotations

from pathlib import Path

from fishertune.data.base import LabelCandidate, Pair, TreeDataset, pair_by_image, per_protocol
from fishertune.data.labels import TRAIN_ID_MAP, LabelConversion, cityscapes_label_map

__all__ = ["GTAV"]


class GTAV(TreeDataset):
    """GTAV images with labels mapped to Cityscapes train ids."""

    splits = ("all",)
    train_split = "all"
    eval_split = "all"
    test_sizes = per_protocol(rein=(1280, 720), fullres=(1280, 720), synthetic=None)
    label_conversion = LabelConversion(
        folders=lambda root: [root / "labels"], label_map=lambda root: cityscapes_label_map()
    )

    def find_pairs(self, base: Path) -> list[Pair]:

        def candidates(image: Path) -> list[LabelCandidate]:
            labels = base / "labels"
            return [
                (labels / f"{image.stem}_labelTrainIds.png", lambda: TRAIN_ID_MAP),
                (labels / image.name, cityscapes_label_map),
            ]

        pairs = pair_by_image(base, "images/*.png", candidates)
        return pairs
