"""The interface every segmentation head implements."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class SegmentationHead(Protocol):
    """A decoder from multi-scale features to per-pixel class scores.

    ``features`` is the neck's output: a list of maps ``(B, C_i, H_i, W_i)`` at strides
    4, 8, 16 and 32 of the input image (finest first). ``targets`` are ``(B, H, W)`` long
    label maps at input resolution with ``ignore_index`` (255) for unlabelled pixels.
    """

    num_classes: int
    ignore_index: int

    def losses(self, features: list[Tensor], targets: Tensor) -> dict[str, Tensor]:
        """Named training losses (each a scalar); the training objective is their sum."""
        ...

    def predict(self, features: list[Tensor], image_size: tuple[int, int]) -> Tensor:
        """Per-pixel class scores ``(B, num_classes, H, W)`` at ``image_size``.

        Scores are logits for heads trained with per-pixel cross-entropy and class-times-mask
        probabilities for mask-classification heads; their argmax is the prediction.
        """
        ...
