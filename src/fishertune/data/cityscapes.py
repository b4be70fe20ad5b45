"""Cityscapes fine annotations (2,975 train / 500 val images).

Layout (the official ``leftImg8bit_trainvaltest`` and ``gtFine_trainvaltest`` packages)::

    root/leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png
    root/gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_labelTrainIds.png   # preferred
    root/gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_labelIds.png        # else, mapped

``*_labelTrainIds.png`` are written by cityscapesscripts' ``createTrainIdLabelImgs``; without
them the label ids are mapped through cityscapesscripts' official table.
"""

from __future__ import annotations

from pathlib import Path

from fishertune.data.base import LabelCandidate, Pair, TreeDataset, pair_by_image, per_protocol
from fishertune.data.labels import TRAIN_ID_MAP, cityscapes_label_map

__all__ = ["Cityscapes"]

_IMAGE_SUFFIX = "_leftImg8bit.png"


class Cityscapes(TreeDataset):
    """Cityscapes ``leftImg8bit`` images with ``gtFine`` train-id labels."""

    splits = ("train", "val", "test")
    train_split = "train"
    eval_split = "val"
    test_sizes = per_protocol(rein=(1024, 512), fullres=(2048, 1024), synthetic=None)
    label_conversion = None  # label ids are mapped on the fly, or converted by cityscapesscripts

    def find_pairs(self, base: Path) -> list[Pair]:

        def candidates(image: Path) -> list[LabelCandidate]:
            prefix = image.name.removesuffix(_IMAGE_SUFFIX)
            folder = base / "gtFine" / self.split / image.parent.name
            return [
                (folder / f"{prefix}_gtFine_labelTrainIds.png", lambda: TRAIN_ID_MAP),
                (folder / f"{prefix}_gtFine_labelIds.png", cityscapes_label_map),
            ]

        pattern = f"leftImg8bit/{self.split}/*/*{_IMAGE_SUFFIX}"
        return pair_by_image(base, pattern, candidates)
