"""Sliding-window inference (mmsegmentation's ``slide_inference``) for any scoring function."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def _pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, int) for v in pair):
        raise ValueError(f"{name} must be an int or a pair of ints (h, w), got {value!r}")
    if min(pair) < 1:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return pair[0], pair[1]


def window_spans(length: int, crop: int, stride: int) -> list[tuple[int, int]]:
    """The ``[start, end)`` windows covering ``range(length)`` along one dimension.

    mmseg's rule: ``max(length - crop + stride - 1, 0) // stride + 1`` windows; window ``i``
    nominally starts at ``i * stride``, is clipped to the border, and then shifted back so
    that it keeps ``min(crop, length)`` elements (the last window ends on the border). A
    dimension shorter than the crop gets a single window of the whole length, without padding.
    """
    if length < 1 or crop < 1 or stride < 1:
        raise ValueError(
            f"length, crop and stride must be positive, got {length}, {crop}, {stride}"
        )
    if stride > crop:
        raise ValueError(f"stride ({stride}) larger than the crop ({crop}) would leave gaps")
    count = max(length - crop + stride - 1, 0) // stride + 1
    spans = []
    for i in range(count):
        end = min(i * stride + crop, length)
        spans.append((max(end - crop, 0), end))
    return spans


def slide_inference(
    fn: Callable[[Tensor], Tensor],
    images: Tensor,
    crop_size: int | tuple[int, int],
    stride: int | tuple[int, int],
) -> Tensor:
    """Per-pixel scores ``(B, K, H, W)`` of ``images`` from overlapping windows.

    ``fn`` maps a crop ``(B, C, h, w)`` to scores ``(B, K, h, w)``. The windows are the
    product of :func:`window_spans` along H and W (crop and stride given as ``(h, w)`` or one
    int for both); every window is scored once for the whole batch, scores are summed into a
    canvas and divided by the number of windows covering each pixel. The canvas is float32
    (float64 if ``fn`` returns float64), so a single window reproduces ``fn(images)`` exactly.
    Raises ValueError for non-positive sizes, a stride larger than the crop, or ``fn`` outputs
    of the wrong shape. Gradients are not disabled here; the caller decides.
    """
    crop_h, crop_w = _pair(crop_size, "crop_size")
    stride_h, stride_w = _pair(stride, "stride")
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got {tuple(images.shape)}")
    batch, _, height, width = images.shape
    rows = window_spans(height, crop_h, stride_h)
    cols = window_spans(width, crop_w, stride_w)
    canvas: Tensor | None = None
    count = torch.zeros(1, 1, height, width, device=images.device)
    for top, bottom in rows:
        for left, right in cols:
            scores = fn(images[:, :, top:bottom, left:right])
            if (
                scores.dim() != 4
                or scores.shape[0] != batch
                or scores.shape[-2:] != (bottom - top, right - left)
            ):
                raise ValueError(
                    f"fn must return (B, K, h, w) = ({batch}, K, {bottom - top}, "
                    f"{right - left}) for that crop, got {tuple(scores.shape)}"
                )
            if canvas is None:
                dtype = torch.promote_types(scores.dtype, torch.float32)
                canvas = scores.new_zeros((batch, scores.shape[1], height, width), dtype=dtype)
            canvas[:, :, top:bottom, left:right] += scores
            count[:, :, top:bottom, left:right] += 1
    assert canvas is not None  # window_spans always returns at least one window
    return canvas / count.to(canvas.dtype)
