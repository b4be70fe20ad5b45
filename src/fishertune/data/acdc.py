"""ACDC: adverse-condition driving (fog, night, rain, snow), Cityscapes train-id labels.

Layout (the official ``rgb_anon_trainvaltest`` and ``gt_trainval`` packages)::

    root/rgb_anon/{condition}/{split}/{sequence}/{name}_rgb_anon.png
    root/gt/{condition}/{split}/{sequence}/{name}_gt_labelTrainIds.png

``conditions`` selects a subset of the four (all by default); test labels are not public.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from fishertune.data.base import (
    LabelCandidate,
    Pair,
    Transform,
    TreeDataset,
    pair_by_image,
    per_protocol,
)
from fishertune.data.labels import TRAIN_ID_MAP

__all__ = ["ACDC", "ACDC_CONDITIONS"]

ACDC_CONDITIONS = ("fog", "night", "rain", "snow")
_IMAGE_SUFFIX = "_rgb_anon.png"


class ACDC(TreeDataset):
    """ACDC images of the chosen conditions with their train-id labels."""

    splits = ("val", "train", "test")
    train_split = "train"
    eval_split = "val"
    test_sizes = per_protocol(rein=(960, 540), fullres=(960, 540), synthetic=None)
    label_conversion = None

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str | None = None,
        *,
        conditions: Sequence[str] = ACDC_CONDITIONS,
        transform: Transform | None = None,
        check: bool = False,
    ) -> None:
        unknown = sorted(set(conditions) - set(ACDC_CONDITIONS))
        if unknown or not conditions:
            raise ValueError(f"ACDC conditions must be a non-empty subset of {ACDC_CONDITIONS}")
        self.conditions = tuple(conditions)
        super().__init__(root, split, transform=transform, check=check)

    def find_pairs(self, base: Path) -> list[Pair]:
        def candidates(image: Path) -> list[LabelCandidate]:
            sequence = image.parent
            condition = sequence.parent.parent.name
            name = image.name.removesuffix(_IMAGE_SUFFIX) + "_gt_labelTrainIds.png"
            folder = base / "gt" / condition / self.split / sequence.name
            return [(folder / name, lambda: TRAIN_ID_MAP)]

        pairs: list[Pair] = []
        for condition in self.conditions:
            pattern = f"rgb_anon/{condition}/{self.split}/*/*{_IMAGE_SUFFIX}"
            pairs.extend(pair_by_image(base, pattern, candidates))
        return pairs
