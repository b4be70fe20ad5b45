"""GTAV (Playing for Data): 24,966 synthetic frames with Cityscapes-id labels.

Layout (the official release, unpacked into one root)::

    root/images/00001.png
    root/labels/00001.png                 # palette PNG: the palette index is the Cityscapes id
    root/labels/00001_labelTrainIds.png   # optional converted train ids, preferred when present

DGSS trains on every frame, so the only split is ``"all"``.
"""

from __future__ import annotations

import os
from pathlib import Path

from fishertune.data.base import LabelCandidate, SegmentationDataset, Transform, pair_by_image
from fishertune.data.labels import TRAIN_ID_MAP, cityscapes_label_map

__all__ = ["GTAV"]


class GTAV(SegmentationDataset):
    """GTAV images with labels mapped to Cityscapes train ids."""

    splits = ("all",)

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str | None = None,
        *,
        transform: Transform | None = None,
        check: bool = False,
    ) -> None:
        self.split = self.resolve_split(split)
        base = self.root_path(root)

        def candidates(image: Path) -> list[LabelCandidate]:
            labels = base / "labels"
            return [
                (labels / f"{image.stem}_labelTrainIds.png", lambda: TRAIN_ID_MAP),
                (labels / image.name, cityscapes_label_map),
            ]

        pairs = pair_by_image(base, "images/*.png", candidates)
        super().__init__(pairs, transform=transform, check=check)
