"""Cityscapes fine annotations (2,975 train / 500 val images).

Layout (the official ``leftImg8bit_trainvaltest`` and ``gtFine_trainvaltest`` packages)::

    root/leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png
    root/gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_labelTrainIds.png   # preferred
    root/gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_labelIds.png        # else, mapped

``*_labelTrainIds.png`` are written by cityscapesscripts' ``createTrainIdLabelImgs``; without
them the label ids are mapped through cityscapesscripts' official table.
"""

from __future__ import annotations

import os
from pathlib import Path

from fishertune.data.base import LabelCandidate, SegmentationDataset, Transform, pair_by_image
from fishertune.data.labels import TRAIN_ID_MAP, cityscapes_label_map

__all__ = ["Cityscapes"]

_IMAGE_SUFFIX = "_leftImg8bit.png"


class Cityscapes(SegmentationDataset):
    """Cityscapes ``leftImg8bit`` images with ``gtFine`` train-id labels."""

    splits = ("train", "val", "test")

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
            prefix = image.name.removesuffix(_IMAGE_SUFFIX)
            folder = base / "gtFine" / self.split / image.parent.name
            return [
                (folder / f"{prefix}_gtFine_labelTrainIds.png", lambda: TRAIN_ID_MAP),
                (folder / f"{prefix}_gtFine_labelIds.png", cityscapes_label_map),
            ]

        pattern = f"leftImg8bit/{self.split}/*/*{_IMAGE_SUFFIX}"
        super().__init__(pair_by_image(base, pattern, candidates), transform=transform, check=check)
