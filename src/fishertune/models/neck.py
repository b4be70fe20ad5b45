"""Multi-scale neck: single-stride ViT feature maps → a pyramid at strides 4, 8, 16 and 32.

A plain ViT yields maps at one stride, the patch size ``p`` (14 or 16). Segmentation heads
expect four maps at strides 4, 8, 16 and 32 of the input image, finest first; the neck builds
them. Two modes:

``"resize"`` (Rein's choice)
    Rein's DINOv2 backbone bilinearly rescales its four stride-16 maps by 4, 2, 1 and ½
    (``F.interpolate(..., mode="bilinear", align_corners=False)``, no learnable op) and leaves
    the channel projection to the head's input convolutions. Here every level is bilinearly
    resized (``align_corners=False``) to its *exact* target size ``(ceil(H/s), ceil(W/s))``
    — so p = 14 is handled the same way — and projected by a 1×1 convolution (with bias) to
    its output width. Both ops are linear and bilinear weights sum to one, so the order does
    not change the result; the convolution runs on the smaller of the two grids (before an
    upsampling, after a downsampling). Levels whose size already matches are not resampled.

``"deconv"`` (ViTDet's simple feature pyramid)
    Learnable rescaling of the stride-p map, each level with its own weights: stride p/4 by
    ``ConvTranspose2d(C, C/2, 2, 2) → LayerNorm2d → GELU → ConvTranspose2d(C/2, C/4, 2, 2)``,
    stride p/2 by ``ConvTranspose2d(C, C/2, 2, 2)``, stride p by identity and stride 2p by
    ``MaxPool2d(2, 2, ceil_mode=True)``; then ``Conv1×1 → LayerNorm2d → Conv3×3 →
    LayerNorm2d`` to the output width. For p = 16 the four maps are exactly at strides 4, 8,
    16, 32 (the ceil-mode pooling gives ``ceil(h/2)`` on odd grids). For any other p (e.g. 14:
    strides 3.5, 7, 14, 28) a map whose size differs from its target is bilinearly resized
    (``align_corners=False``) to it right after the rescaling op, before the output
    convolutions. (ViTDet itself assumes p = 16; the resize is our extension.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from timm.layers.norm import LayerNorm2d
from torch import Tensor, nn

STRIDES = (4, 8, 16, 32)
"""Output strides of the pyramid, finest first."""

MODES = ("resize", "deconv")


def pyramid_sizes(image_size: tuple[int, int]) -> list[tuple[int, int]]:
    """The spatial sizes ``(ceil(H/s), ceil(W/s))`` of the pyramid levels for ``s`` in STRIDES."""
    height, width = image_size
    return [(math.ceil(height / s), math.ceil(width / s)) for s in STRIDES]


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class _ResizeLevel(nn.Module):
    """Bilinear resize to the target size and a 1×1 projection, on the cheaper grid."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        if size[0] * size[1] >= x.shape[-2] * x.shape[-1]:
            return _resize(self.proj(x), size)
        out: Tensor = self.proj(_resize(x, size))
        return out


class _DeconvLevel(nn.Module):
    """One ViTDet pyramid level: rescaling op, resize to the target size, output convolutions."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        half, quarter = max(in_channels // 2, 1), max(in_channels // 4, 1)
        self.rescale: nn.Module
        if stride == 4:
            self.rescale = nn.Sequential(
                nn.ConvTranspose2d(in_channels, half, kernel_size=2, stride=2),
                LayerNorm2d(half),
                nn.GELU(),
                nn.ConvTranspose2d(half, quarter, kernel_size=2, stride=2),
            )
            width = quarter
        elif stride == 8:
            self.rescale = nn.ConvTranspose2d(in_channels, half, kernel_size=2, stride=2)
            width = half
        elif stride == 16:
            self.rescale = nn.Identity()
            width = in_channels
        else:
            self.rescale = nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)
            width = in_channels
        self.output = nn.Sequential(
            nn.Conv2d(width, out_channels, kernel_size=1, bias=False),
            LayerNorm2d(out_channels),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_channels),
        )

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        out: Tensor = self.output(_resize(self.rescale(x), size))
        return out


class MultiScaleNeck(nn.Module):
    """Turn ``num_inputs`` stride-p ViT maps into four maps at strides 4, 8, 16, 32.

    Args:
        in_channels: channels ``C`` of every input map (the ViT's embedding width).
        out_channels: output channels, one int for all four levels or one per level
            (finest first).
        num_inputs: 4 (level i is built from input i: shallow block → finest level) or 1
            (all four levels are built from the one map, each with its own weights).
        mode: ``"resize"`` or ``"deconv"``; see the module docstring.

    ``forward(features, image_size)`` takes the list of ``(B, C, h, w)`` maps and the
    ``(H, W)`` size of the image the backbone saw, and returns four maps
    ``(B, out_channels[i], ceil(H/s_i), ceil(W/s_i))`` for ``s = 4, 8, 16, 32``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | Sequence[int],
        num_inputs: int = 4,
        mode: str = "resize",
    ) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be positive, got {in_channels}")
        widths = (
            (out_channels,) * len(STRIDES) if isinstance(out_channels, int) else tuple(out_channels)
        )
        if len(widths) != len(STRIDES) or min(widths) < 1:
            raise ValueError(
                f"out_channels must be a positive int or {len(STRIDES)} positive ints, "
                f"got {out_channels!r}"
            )
        if num_inputs not in (1, len(STRIDES)):
            raise ValueError(f"num_inputs must be 1 or {len(STRIDES)}, got {num_inputs}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.in_channels = in_channels
        self.out_channels: tuple[int, ...] = widths
        self.num_inputs = num_inputs
        self.mode = mode
        levels: list[nn.Module] = []
        for stride, width in zip(STRIDES, widths, strict=True):
            if mode == "resize":
                levels.append(_ResizeLevel(in_channels, width))
            else:
                levels.append(_DeconvLevel(in_channels, width, stride))
        self.levels = nn.ModuleList(levels)

    def forward(self, features: Sequence[Tensor], image_size: tuple[int, int]) -> list[Tensor]:
        """The pyramid ``[stride 4, 8, 16, 32]`` of an ``image_size`` input, finest first."""
        self._check(features, image_size)
        inputs = list(features) if self.num_inputs > 1 else [features[0]] * len(STRIDES)
        sizes = pyramid_sizes(image_size)
        return [level(x, size) for level, x, size in zip(self.levels, inputs, sizes, strict=True)]

    def _check(self, features: Sequence[Tensor], image_size: tuple[int, int]) -> None:
        if len(features) != self.num_inputs:
            raise ValueError(
                f"MultiScaleNeck expects {self.num_inputs} feature maps, got {len(features)}"
            )
        if len(image_size) != 2 or min(image_size) < 1:
            raise ValueError(f"image_size must be two positive ints (H, W), got {image_size!r}")
        first = features[0]
        for i, x in enumerate(features):
            if x.dim() != 4 or x.shape[1] != self.in_channels:
                raise ValueError(
                    f"feature map {i} must be (B, {self.in_channels}, h, w), got {tuple(x.shape)}"
                )
            if x.shape[0] != first.shape[0] or x.shape[-2:] != first.shape[-2:]:
                raise ValueError(
                    "all feature maps must share batch size and spatial size (one stride), got "
                    f"{[tuple(f.shape) for f in features]}"
                )
