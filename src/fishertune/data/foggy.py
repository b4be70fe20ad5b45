"""Foggy test sets: Foggy Zurich (40 labelled images) and Foggy Driving (101 images).

Layouts supported (assumed from the official releases)::

    Foggy Zurich (root = the Foggy_Zurich folder):
        root/gt_labelTrainIds/**/{name}.png   # the labelled test images; each names its image
        root/RGB/**/{name}.png                # the image with the same file name, any subfolder
    Foggy Driving:
        root/leftImg8bit/test/{pedestrian,public}/{name}_leftImg8bit.png
        root/gtFine/test/{...}/{name}_gtFine_labelTrainIds.png       # preferred
        root/gtCoarse/test/{...}/{name}_gtCoarse_labelTrainIds.png   # else (coarse-only images)

Foggy Zurich's ``RGB`` folder holds thousands of unlabelled frames, so its pairs are driven by
the label files: every label needs an image of the same file name under ``RGB``.
"""

from __future__ import annotations

from pathlib import Path

from fishertune.data.base import EvaluationTreeDataset, LabelCandidate, Pair, pair_by_image
from fishertune.data.labels import TRAIN_ID_MAP

__all__ = ["FoggyDriving", "FoggyZurich"]


def _pair_by_label(root: Path) -> list[Pair]:
    """Pair each ``gt_labelTrainIds/**/*.png`` with the ``RGB/**`` image of the same name."""
    pattern = "gt_labelTrainIds/**/*.png"
    labels = sorted(path for path in root.glob(pattern) if path.is_file())
    if not labels:
        raise FileNotFoundError(f"no labels found: nothing matches {root / pattern}")
    images: dict[str, Path] = {}
    for path in sorted(root.glob("RGB/**/*.png")):
        images.setdefault(path.name, path)
    pairs = []
    for label in labels:
        image = images.get(label.name)
        if image is None:
            raise FileNotFoundError(
                f"label {label} has no image (looked for {root / 'RGB'}/**/{label.name})"
            )
        pairs.append(Pair(image, label, TRAIN_ID_MAP))
    return pairs


class FoggyZurich(EvaluationTreeDataset):
    """Foggy Zurich's labelled test images with their train-id labels."""

    splits = ("test",)
    eval_split = "test"

    def find_pairs(self, base: Path) -> list[Pair]:
        return _pair_by_label(base)


class FoggyDriving(EvaluationTreeDataset):
    """Foggy Driving test images with fine (else coarse) train-id labels."""

    splits = ("test",)
    eval_split = "test"

    def find_pairs(self, base: Path) -> list[Pair]:

        def candidates(image: Path) -> list[LabelCandidate]:
            prefix = image.name.removesuffix("_leftImg8bit.png")
            group = image.parent.name
            fine = base / "gtFine" / self.split / group / f"{prefix}_gtFine_labelTrainIds.png"
            coarse = base / "gtCoarse" / self.split / group / f"{prefix}_gtCoarse_labelTrainIds.png"
            return [(fine, lambda: TRAIN_ID_MAP), (coarse, lambda: TRAIN_ID_MAP)]

        pattern = f"leftImg8bit/{self.split}/*/*_leftImg8bit.png"
        return pair_by_image(base, pattern, candidates)
