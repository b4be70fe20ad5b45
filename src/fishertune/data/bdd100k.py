"""BDD100K 10K semantic segmentation (7,000 train / 1,000 val images).

Layout (the official ``bdd100k_images_10k`` and ``bdd100k_sem_seg_labels_trainval`` packages)::

    root/images/10k/{split}/{name}.jpg
    root/labels/sem_seg/masks/{split}/{name}.png   # train ids already, 255 = ignore
"""

from __future__ import annotations

from pathlib import Path

from fishertune.data.base import LabelCandidate, Pair, TreeDataset, pair_by_image, per_protocol
from fishertune.data.labels import TRAIN_ID_MAP

__all__ = ["BDD100K"]


class BDD100K(TreeDataset):
    """BDD100K 10K images with their train-id masks."""

    splits = ("val", "train")
    train_split = "train"
    eval_split = "val"
    test_sizes = per_protocol(rein=(1280, 720), fullres=(1280, 720), synthetic=None)
    label_conversion = None

    def find_pairs(self, base: Path) -> list[Pair]:
        masks = base / "labels" / "sem_seg" / "masks" / self.split

        def candidates(image: Path) -> list[LabelCandidate]:
            return [(masks / f"{image.stem}.png", lambda: TRAIN_ID_MAP)]

        pattern = f"images/10k/{self.split}/*.jpg"
        return pair_by_image(base, pattern, candidates)
