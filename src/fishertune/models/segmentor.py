"""The segmentor: ViT backbone → multi-scale neck → segmentation head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fishertune.models.heads.base import SegmentationHead
from fishertune.models.sliding_window import slide_inference

PREDICT_MODES = ("whole", "slide")


def _pad_bottom_right(x: Tensor, multiple: int, value: float) -> Tensor:
    """Pad the last two dimensions at the bottom/right up to multiples of ``multiple``."""
    pad_h = -x.shape[-2] % multiple
    pad_w = -x.shape[-1] % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, (0, pad_w, 0, pad_h), value=value)


class Segmentor(nn.Module):
    """A semantic segmentation model built from a backbone, a neck and a head.

    ``backbone(images)`` must return a list of ``(B, C, H/p, W/p)`` maps and have an int
    attribute ``patch_size`` (p); ``neck(features, image_size)`` returns the stride 4/8/16/32
    pyramid; ``head`` implements :class:`~fishertune.models.heads.base.SegmentationHead` and is
    an ``nn.Module``.

    Patch-size padding: the backbone only accepts sizes that are multiples of p, so every input
    (whole image or sliding-window crop) is zero-padded at the bottom and right up to the next
    multiple of p (zero is the mean colour of normalised images), the neck and head see the
    padded size, and the scores are cropped back to the top-left ``H × W``. In training the
    targets are padded with ``head.ignore_index``, so padded pixels never enter a loss and the
    loss is the cross-entropy of exactly the scores :meth:`predict` returns. (Padded pixels can
    still influence real ones through global attention and bilinear upsampling.)
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module, head: SegmentationHead) -> None:
        super().__init__()
        patch_size = getattr(backbone, "patch_size", None)
        if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1:
            raise ValueError(f"backbone.patch_size must be a positive int, got {patch_size!r}")
        if not isinstance(head, nn.Module):
            raise TypeError(f"head must be an nn.Module, got {type(head).__name__}")
        self.backbone = backbone
        self.neck = neck
        self.head = head
        self.patch_size = patch_size

    @property
    def num_classes(self) -> int:
        """Number of classes ``K`` of the head."""
        return self.head.num_classes

    def forward(self, images: Tensor, targets: Tensor | None = None) -> Tensor | dict[str, Tensor]:
        """Training losses (``targets`` given) or differentiable scores ``(B, K, H, W)``.

        ``images``: ``(B, 3, H, W)``; ``targets``: ``(B, H, W)`` long labels with
        ``head.ignore_index`` for unlabelled pixels. Without targets this is the whole-image
        prediction of :meth:`predict`, but with autograd enabled (for the Fisher estimators).
        """
        if targets is None:
            return self._scores(images)
        if targets.shape != (images.shape[0], *images.shape[-2:]):
            raise ValueError(
                f"targets must be (B, H, W) = {(images.shape[0], *images.shape[-2:])}, "
                f"got {tuple(targets.shape)}"
            )
        padded = _pad_bottom_right(images, self.patch_size, 0.0)
        features = self._features(padded)
        return self.head.losses(
            features, _pad_bottom_right(targets, self.patch_size, self.head.ignore_index)
        )

    def predict(
        self,
        images: Tensor,
        *,
        mode: str = "whole",
        crop_size: int | tuple[int, int] = 512,
        stride: int | tuple[int, int] = 341,
    ) -> Tensor:
        """Scores ``(B, K, H, W)`` at input size, without gradients, in the current mode.

        ``mode="whole"`` runs the model once on the (padded) image; ``mode="slide"`` runs it on
        mmseg-style windows (:func:`~fishertune.models.sliding_window.slide_inference`:
        ``crop_size`` windows every ``stride`` pixels, the last one aligned to the border, a
        dimension shorter than the crop seen whole, overlapping scores averaged). Each crop is
        padded to a multiple of the patch size on its own. Train/eval mode is left as is: call
        ``model.eval()`` first.
        """
        if mode not in PREDICT_MODES:
            raise ValueError(f"mode must be one of {PREDICT_MODES}, got {mode!r}")
        with torch.no_grad():
            if mode == "whole":
                return self._scores(images)
            return slide_inference(self._scores, images, crop_size, stride)

    def _features(self, padded: Tensor) -> list[Tensor]:
        image_size = (padded.shape[-2], padded.shape[-1])
        features: list[Tensor] = self.neck(self.backbone(padded), image_size)
        return features

    def _scores(self, images: Tensor) -> Tensor:
        if images.dim() != 4:
            raise ValueError(f"images must be (B, C, H, W), got {tuple(images.shape)}")
        height, width = images.shape[-2:]
        padded = _pad_bottom_right(images, self.patch_size, 0.0)
        scores = self.head.predict(self._features(padded), (padded.shape[-2], padded.shape[-1]))
        return scores[:, :, :height, :width]
