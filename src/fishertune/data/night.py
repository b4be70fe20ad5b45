"""Nighttime test sets: Dark Zurich (val) and Nighttime Driving (test).

Layouts (the official releases)::

    Dark Zurich:        root/rgb_anon/val/night/GOPR0356/{name}_rgb_anon.png
                        root/gt/val/night/GOPR0356/{name}_gt_labelTrainIds.png
    Nighttime Driving:  root/leftImg8bit/test/night/{name}_leftImg8bit.png
                        root/gtCoarse_daytime_trainvaltest/test/night/{name}_gtCoarse_labelTrainIds.png

Dark Zurich's sequence folder is matched by ``*`` (the public val set has only GOPR0356).
"""

from __future__ import annotations

from pathlib import Path

from fishertune.data.base import EvaluationTreeDataset, LabelCandidate, Pair, pair_by_image
from fishertune.data.labels import TRAIN_ID_MAP

__all__ = ["DarkZurich", "NighttimeDriving"]


class DarkZurich(EvaluationTreeDataset):
    """Dark Zurich nighttime images with train-id labels (the labelled val split)."""

    splits = ("val",)
    eval_split = "val"

    def find_pairs(self, base: Path) -> list[Pair]:

        def candidates(image: Path) -> list[LabelCandidate]:
            name = image.name.removesuffix("_rgb_anon.png") + "_gt_labelTrainIds.png"
            folder = base / "gt" / self.split / "night" / image.parent.name
            return [(folder / name, lambda: TRAIN_ID_MAP)]

        pattern = f"rgb_anon/{self.split}/night/*/*_rgb_anon.png"
        return pair_by_image(base, pattern, candidates)


class NighttimeDriving(EvaluationTreeDataset):
    """Nighttime Driving test images with their coarse train-id labels."""

    splits = ("test",)
    eval_split = "test"

    def find_pairs(self, base: Path) -> list[Pair]:
        labels = base / "gtCoarse_daytime_trainvaltest" / self.split / "night"

        def candidates(image: Path) -> list[LabelCandidate]:
            name = image.name.removesuffix("_leftImg8bit.png") + "_gtCoarse_labelTrainIds.png"
            return [(labels / name, lambda: TRAIN_ID_MAP)]

        pattern = f"leftImg8bit/{self.split}/night/*_leftImg8bit.png"
        return pair_by_image(base, pattern, candidates)
