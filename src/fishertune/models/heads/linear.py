"""A linear decoder in the style of DINOv2's linear segmentation probe (the CPU default head)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers.norm import LayerNorm2d
from torch import Tensor, nn

from fishertune.label_space import IGNORE_INDEX
from fishertune.process_group import reduce_mean

NORMS = ("bn", "ln")


class LinearHead(nn.Module):
    """Upsample, concatenate, normalise, classify each pixel with a 1×1 convolution.

    As DINOv2's ``BNHead``: every level is bilinearly resized (``align_corners=False``) to the
    size of level ``level`` (the first, finest, by default), the maps are concatenated along
    channels, normalised
    (``"bn"``: ``BatchNorm2d``; ``"ln"``: ``LayerNorm`` over the channels of each pixel),
    passed through ``Dropout2d(dropout)`` and a 1×1 convolution gives ``num_classes`` logits
    at that level's resolution. With ``subpixel = r > 1`` the convolution gives
    ``num_classes · r²`` channels that a pixel shuffle rearranges into logits at ``r`` times
    that resolution (a sub-pixel convolution, Shi et al., CVPR 2016): each feature vector then
    predicts an ``r × r`` block of pixels, so detail finer than the feature grid (thin poles,
    small signs) can be segmented by a head that is still linear. Implements
    :class:`fishertune.models.heads.base.SegmentationHead`.

    Args:
        in_channels: channels of each input level, finest first (e.g. ``neck.out_channels``).
        num_classes: number of classes ``K``.
        norm: ``"bn"`` or ``"ln"``.
        ignore_index: label of unlabelled pixels, excluded from the loss.
        dropout: channel dropout probability before the classifier (DINOv2 uses 0).
        subpixel: output upsampling factor ``r`` of the sub-pixel classifier (1: none, as
            DINOv2's probe).
        level: the input level whose resolution the head works at; with a ViT's neck, the
            level at the patch stride holds the tokens unresampled, so a sub-pixel classifier
            with ``r`` = patch size predicts each patch's pixels from its own token.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        norm: str = "bn",
        ignore_index: int = IGNORE_INDEX,
        dropout: float = 0.0,
        subpixel: int = 1,
        level: int = 0,
    ) -> None:
        super().__init__()
        channels = tuple(in_channels)
        if not channels or min(channels) < 1:
            raise ValueError(f"in_channels must be one or more positive ints, got {in_channels!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if isinstance(subpixel, bool) or not isinstance(subpixel, int) or subpixel < 1:
            raise ValueError(f"subpixel must be a positive int, got {subpixel!r}")
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level < len(channels):
            raise ValueError(f"level must be an int in [0, {len(channels)}), got {level!r}")
        self.in_channels = channels
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.subpixel = subpixel
        self.level = level
        total = sum(channels)
        self.norm = nn.BatchNorm2d(total) if norm == "bn" else LayerNorm2d(total)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(total, num_classes * subpixel**2, kernel_size=1)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """Logits ``(B, K, r·H_l, r·W_l)``: ``r = subpixel`` times level ``l``'s size."""
        if len(features) != len(self.in_channels):
            raise ValueError(
                f"LinearHead expects {len(self.in_channels)} feature maps, got {len(features)}"
            )
        for i, (x, channels) in enumerate(zip(features, self.in_channels, strict=True)):
            if x.dim() != 4 or x.shape[1] != channels:
                raise ValueError(
                    f"feature map {i} must be (B, {channels}, h, w), got {tuple(x.shape)}"
                )
        size = features[self.level].shape[-2:]
        resized = [
            x
            if x.shape[-2:] == size
            else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            for x in features
        ]
        out: Tensor = self.classifier(self.dropout(self.norm(torch.cat(resized, dim=1))))
        return out if self.subpixel == 1 else F.pixel_shuffle(out, self.subpixel)

    def losses(self, features: list[Tensor], targets: Tensor) -> dict[str, Tensor]:
        """``{"loss_ce": ...}``: pixel cross-entropy averaged over the batch's valid pixels.

        Logits are bilinearly upsampled to the targets' size ``(H, W)``. A batch without any
        valid pixel gives a loss of exactly 0 (with a zero gradient) rather than NaN. Under
        ``torch.distributed`` the batch spans the processes: the sum is divided by the mean
        valid count per process, so the average of the processes' gradients is that of the
        pixel mean over the whole batch (every process must call this for its micro-batch).
        """
        if targets.dim() != 3 or targets.shape[0] != features[0].shape[0]:
            raise ValueError(
                f"targets must be (B, H, W) with B = {features[0].shape[0]}, "
                f"got {tuple(targets.shape)}"
            )
        logits = self.predict(features, (targets.shape[1], targets.shape[2]))
        summed = F.cross_entropy(
            logits, targets.long(), ignore_index=self.ignore_index, reduction="sum"
        )
        valid = reduce_mean((targets != self.ignore_index).sum().to(summed.dtype))
        return {"loss_ce": summed / valid.clamp_min(1)}

    def predict(self, features: list[Tensor], image_size: tuple[int, int]) -> Tensor:
        """Logits ``(B, K, H, W)`` bilinearly upsampled to ``image_size``."""
        logits = self.forward(features)
        if tuple(logits.shape[-2:]) == tuple(image_size):
            return logits
        return F.interpolate(logits, size=image_size, mode="bilinear", align_corners=False)
