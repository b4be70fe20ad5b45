"""How much of the embedded benchmark a per-token head can segment at a given token grid.

An oracle predicts, for every token (patch), the true class histogram of its pixels; the
histograms are bilinearly upsampled to the image, as a linear head's logits are, and the
arg-max is scored with the benchmark's metric on the source validation scenes. The result is
roughly the ceiling of a linear decoder on that grid, whatever the backbone: a design check for
the benchmark (issue 11 asks full fine-tuning to reach 60 mIoU with person, pole, traffic sign
and car ≥ 30 IoU). Prints mIoU and those four classes' IoU per (image size, patch) setting.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from fishertune.data.synthetic.dataset import render_sample, scene_seed
from fishertune.evaluation.metric import SegmentationMetric
from fishertune.label_space import CITYSCAPES_CLASSES

SETTINGS = (((64, 128), 8), ((64, 128), 4), ((96, 192), 8), ((128, 256), 8), ((128, 256), 4))
WATCHED = ("person", "pole", "traffic sign", "car")


def ceiling(size: tuple[int, int], patch: int, scenes: int) -> tuple[float, dict[str, float]]:
    """The oracle's mIoU and per-class IoU on ``scenes`` source validation scenes."""
    classes = len(CITYSCAPES_CLASSES)
    metric = SegmentationMetric(classes)
    grid = (size[0] // patch, size[1] // patch)
    for index in range(scenes):
        _, ids = render_sample(scene_seed(0, "val", index), "source", size)
        label = torch.as_tensor(np.asarray(ids)).long()
        valid = label != 255
        onehot = F.one_hot(label.clamp(0, classes - 1), classes).permute(2, 0, 1).float()
        onehot *= valid.float()
        cells = F.adaptive_avg_pool2d(onehot[None], grid)
        logits = F.interpolate(cells, size=size, mode="bilinear", align_corners=False)
        metric.update(logits.argmax(1), label[None])
    result = metric.compute()
    iou = result["iou"]
    return float(result["miou"]), {c: float(iou[CITYSCAPES_CLASSES.index(c)]) for c in WATCHED}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scenes", type=int, default=100)
    args = parser.parse_args()
    print(f"oracle per-token head on {args.scenes} source validation scenes")
    print("| image | patch | tokens | mIoU | " + " | ".join(WATCHED) + " |")
    print("|---|---|---|---|" + "---|" * len(WATCHED))
    for size, patch in SETTINGS:
        miou, watched = ceiling(size, patch, args.scenes)
        cells = " | ".join(f"{100 * watched[c]:.1f}" for c in WATCHED)
        tokens = f"{size[0] // patch}×{size[1] // patch}"
        print(f"| {size[0]}×{size[1]} | {patch} | {tokens} | {100 * miou:.1f} | {cells} |")


if __name__ == "__main__":
    main()
