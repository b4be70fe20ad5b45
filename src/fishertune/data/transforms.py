"""Joint image/label transforms: the GTAV training pipeline of Rein (mmseg) in torch ops.

Every transform maps ``(image, label)`` to ``(image, label)``: ``image`` a ``uint8`` tensor
``(3, H, W)`` (RGB) until :class:`Normalize` turns it into ``float32``, ``label`` an ``int64``
tensor ``(H, W)`` of train ids (255 = ignore) whose values are only ever copied, never
interpolated (nearest-neighbour resizing, 255-padding).

The training pipeline (:func:`train_transform`) follows Rein's GTAV config::

    RandomResize(scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True)
    RandomCrop(crop_size=(512, 512), cat_max_ratio=0.75)
    RandomFlip(prob=0.5)
    PhotoMetricDistortion()
    # + SegDataPreProcessor: (x - mean) / std

Randomness: every random transform takes an optional ``generator`` in ``__call__``; a
:class:`Compose` forwards the one it is called with, or else the one it was built with, to each
step. With no generator anywhere, torch's global RNG is used — the right choice inside
``DataLoader`` workers, whose global RNG torch seeds per worker from the loader's base seed (a
generator built into the transform would be copied into every worker with the same state, so
all workers would draw the same numbers). Pass ``DataLoader(generator=...)`` for a
reproducible run; pass a seeded ``torch.Generator`` for reproducible in-process use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as nnf
from torch import Tensor
from torchvision.transforms.v2 import functional as tvf

from fishertune.label_space import IGNORE_INDEX

__all__ = [
    "Compose",
    "JointTransform",
    "Normalize",
    "PhotometricDistortion",
    "RandomCrop",
    "RandomHorizontalFlip",
    "RandomRescale",
    "resize_pair",
    "test_transform",
    "train_transform",
]


class JointTransform(Protocol):
    """A transform of an ``(image, label)`` pair drawing any randomness from ``generator``."""

    def __call__(
        self, image: Tensor, label: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]: ...


def _uniform(generator: torch.Generator | None, low: float, high: float) -> float:
    """A float drawn uniformly from ``[low, high)``."""
    return low + (high - low) * float(torch.rand((), generator=generator))


def _randint(generator: torch.Generator | None, low: int, high: int) -> int:
    """An integer drawn uniformly from ``[low, high)`` (numpy's ``randint`` convention)."""
    return int(torch.randint(low, high, (), generator=generator))


def _coin(generator: torch.Generator | None, prob: float = 0.5) -> bool:
    """True with probability ``prob``."""
    return float(torch.rand((), generator=generator)) < prob


def _nearest_index(size_in: int, size_out: int) -> Tensor:
    """Source indices of nearest-neighbour resampling (``floor(i * in / out)``, as cv2/torch)."""
    scale = size_in / size_out
    index = (torch.arange(size_out, dtype=torch.float64) * scale).floor().to(torch.int64)
    return index.clamp_(max=size_in - 1)


def resize_pair(
    image: Tensor, label: Tensor, size: tuple[int, int], *, antialias: bool = True
) -> tuple[Tensor, Tensor]:
    """Resize to ``size = (height, width)``: the image bilinearly, the label by nearest neighbour.

    The label is resampled by index gathering, so its dtype and its set of values are kept
    exactly. ``antialias`` low-pass filters the image when shrinking it (mmcv's cv2 bilinear does
    not); it has no effect when enlarging.
    """
    height, width = size
    if tuple(image.shape[-2:]) != (height, width):
        image = tvf.resize(image, [height, width], antialias=antialias)
    in_height, in_width = label.shape[-2:]
    if (in_height, in_width) != (height, width):
        rows = _nearest_index(in_height, height)
        cols = _nearest_index(in_width, width)
        label = label[..., rows[:, None], cols]
    return image, label


class RandomRescale:
    """mmseg's ``RandomResize(scale=(long, short), ratio_range, keep_ratio=True)``.

    A ratio ``r`` is drawn uniformly from ``ratio_range``; the target scale is
    ``(int(long * r), int(short * r))`` (mmseg ``RandomResize._random_sample_ratio``), and the
    pair is rescaled keeping its aspect ratio by mmcv's ``rescale_size`` rule: factor
    ``f = min(int(long*r) / long_side, int(short*r) / short_side)``, new side
    ``int(side * f + 0.5)``. With ``long = 4 * short`` (the default, mmseg's ``(2048, 512)``) the
    short side becomes ``int(short * r)`` for every image of aspect ratio ≤ 4 (GTAV 1.82,
    Cityscapes 2). Image bilinear (see ``antialias``), label nearest.
    """

    def __init__(
        self,
        short: int = 512,
        long: int | None = None,
        ratio_range: tuple[float, float] = (0.5, 2.0),
        *,
        antialias: bool = True,
    ) -> None:
        if short <= 0 or (long is not None and long < short):
            raise ValueError(f"need 0 < short <= long, got short={short}, long={long}")
        if not 0 < ratio_range[0] <= ratio_range[1]:
            raise ValueError(f"ratio_range must satisfy 0 < low <= high, got {ratio_range}")
        self.short = short
        self.long = 4 * short if long is None else long
        self.ratio_range = ratio_range
        self.antialias = antialias

    def output_size(self, height: int, width: int, ratio: float) -> tuple[int, int]:
        """The ``(height, width)`` an image of this size is rescaled to for ratio ``ratio``."""
        factor = min(
            int(self.long * ratio) / max(height, width),
            int(self.short * ratio) / min(height, width),
        )
        return int(height * factor + 0.5), int(width * factor + 0.5)

    def __call__(
        self, image: Tensor, label: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        ratio = _uniform(generator, *self.ratio_range)
        size = self.output_size(image.shape[-2], image.shape[-1], ratio)
        return resize_pair(image, label, size, antialias=self.antialias)


class RandomCrop:
    """mmseg's ``RandomCrop(crop_size, cat_max_ratio, ignore_index)``, then bottom/right padding.

    A window of ``size = (height, width)`` (clipped to the image) is placed uniformly at random.
    With ``cat_max_ratio < 1`` a window is redrawn, up to 10 times, unless its label holds at
    least two non-ignored classes and the largest covers less than ``cat_max_ratio`` of the
    non-ignored pixels; as in mmseg the window drawn after the 10th rejection is used unchecked.
    An image smaller than the crop is padded at the bottom/right with ``pad_value`` (image) and
    ``ignore_index`` (label). mmseg's data preprocessor pads there too, but after normalising,
    so its image padding is the mean colour; here it is ``pad_value`` (0, black) in uint8.
    """

    retries = 10

    def __init__(
        self,
        size: int | tuple[int, int] = 512,
        cat_max_ratio: float = 0.75,
        ignore_index: int = IGNORE_INDEX,
        pad_value: int = 0,
    ) -> None:
        self.size = (size, size) if isinstance(size, int) else size
        if min(self.size) <= 0:
            raise ValueError(f"crop size must be positive, got {self.size}")
        self.cat_max_ratio = cat_max_ratio
        self.ignore_index = ignore_index
        self.pad_value = pad_value

    def _window(
        self, height: int, width: int, generator: torch.Generator | None
    ) -> tuple[int, int]:
        """A random top-left corner ``(top, left)``."""
        top = _randint(generator, 0, max(height - self.size[0], 0) + 1)
        left = _randint(generator, 0, max(width - self.size[1], 0) + 1)
        return top, left

    def _acceptable(self, label: Tensor) -> bool:
        """Whether a cropped label has ≥ 2 classes, none above ``cat_max_ratio`` of the pixels."""
        counts = torch.bincount(label.flatten())
        if self.ignore_index < counts.numel():
            counts[self.ignore_index] = 0
        counts = counts[counts > 0]
        return counts.numel() > 1 and float(counts.max()) / float(counts.sum()) < self.cat_max_ratio

    def __call__(
        self, image: Tensor, label: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        crop_h, crop_w = self.size
        height, width = label.shape[-2:]
        top, left = self._window(height, width, generator)
        if self.cat_max_ratio < 1.0:
            for _ in range(self.retries):
                if self._acceptable(label[top : top + crop_h, left : left + crop_w]):
                    break
                top, left = self._window(height, width, generator)
        image = image[..., top : top + crop_h, left : left + crop_w]
        label = label[top : top + crop_h, left : left + crop_w]
        pad_h, pad_w = crop_h - label.shape[0], crop_w - label.shape[1]
        if pad_h > 0 or pad_w > 0:
            image = nnf.pad(image, (0, pad_w, 0, pad_h), value=self.pad_value)
            label = nnf.pad(label, (0, pad_w, 0, pad_h), value=self.ignore_index)
        return image.contiguous(), label.contiguous()


class RandomHorizontalFlip:
    """Mirror image and label left-right together with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(
        self, image: Tensor, label: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        if _coin(generator, self.p):
            return image.flip(-1), label.flip(-1)
        return image, label


class PhotometricDistortion:
    """mmseg's ``PhotoMetricDistortion`` on a uint8 RGB image; the label passes through.

    In order, each applied with probability 1/2 (mmseg): brightness (add ``U(-δb, δb)``),
    contrast (multiply by ``U(contrast_range)``) either here or last (a coin decides, as mmseg),
    saturation (HSV saturation multiplied by ``U(saturation_range)`` and clipped to 1) and hue
    (HSV hue shifted by an integer ``k`` in ``[-δh, δh)`` OpenCV units, 1/180 of a turn each).
    Brightness and contrast clip to [0, 255] and truncate to uint8 as mmseg's ``convert`` does.
    Saturation is computed exactly in RGB — ``c' = V - k (V - c)`` with ``k = min(α, V / (V -
    min))`` keeps hue and value — rather than through cv2's uint8 HSV round trip; hue uses
    torchvision's ``adjust_hue``.
    """

    def __init__(
        self,
        brightness_delta: int = 32,
        contrast_range: tuple[float, float] = (0.5, 1.5),
        saturation_range: tuple[float, float] = (0.5, 1.5),
        hue_delta: int = 18,
    ) -> None:
        self.brightness_delta = brightness_delta
        self.contrast_range = contrast_range
        self.saturation_range = saturation_range
        self.hue_delta = hue_delta

    @staticmethod
    def _convert(image: Tensor, alpha: float = 1.0, beta: float = 0.0) -> Tensor:
        """``clip(image * alpha + beta, 0, 255)`` truncated to uint8 (mmseg's ``convert``)."""
        return (image.float() * alpha + beta).clamp_(0, 255).to(torch.uint8)

    @staticmethod
    def _saturate(image: Tensor, alpha: float) -> Tensor:
        """Multiply the HSV saturation by ``alpha`` (clipped to 1), keeping hue and value."""
        rgb = image.float()
        value = rgb.amax(dim=0, keepdim=True)
        spread = value - rgb.amin(dim=0, keepdim=True)
        gain = torch.clamp(value / spread.clamp(min=1e-6), max=alpha)
        return (value - gain * (value - rgb)).round_().clamp_(0, 255).to(torch.uint8)

    def __call__(
        self, image: Tensor, label: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        if _coin(generator):
            delta = self.brightness_delta
            image = self._convert(image, beta=_uniform(generator, -delta, delta))
        contrast_last = not _coin(generator)
        if not contrast_last and _coin(generator):
            image = self._convert(image, alpha=_uniform(generator, *self.contrast_range))
        if _coin(generator):
            image = self._saturate(image, _uniform(generator, *self.saturation_range))
        if _coin(generator):
            shift = _randint(generator, -self.hue_delta, self.hue_delta)
            image = tvf.adjust_hue(image, shift / 180.0)
        if contrast_last and _coin(generator):
            image = self._convert(image, alpha=_uniform(generator, *self.contrast_range))
        return image, label


class Normalize:
    """uint8 image → float32 ``(image / 255 - mean) / std`` per channel; the label passes through.

    ``mean`` and ``std`` are in [0, 1] units, as :attr:`ViTBackbone.mean` / ``.std``.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        if len(mean) != len(std) or any(value <= 0 for value in std):
            raise ValueError(f"need one positive std per mean, got mean={mean}, std={std}")
        self.mean = tuple(float(value) for value in mean)
        self.std = tuple(float(value) for value in std)
        self._offset = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1) * 255.0
        self._scale = 1.0 / (torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1) * 255.0)

    def __call__(
        self, image: Tensor, label: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        return (image.to(torch.float32) - self._offset).mul_(self._scale), label


class Compose:
    """Apply ``transforms`` in order, passing each the same generator.

    The generator is the one given to ``__call__``, else ``generator`` given here, else None
    (torch's global RNG; see the module notes on ``DataLoader`` workers). A Compose is a
    :data:`~fishertune.data.base.Transform`.
    """

    def __init__(
        self, transforms: Sequence[JointTransform], generator: torch.Generator | None = None
    ) -> None:
        self.transforms = list(transforms)
        self.generator = generator

    def __call__(
        self, image: Tensor, label: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        generator = self.generator if generator is None else generator
        for transform in self.transforms:
            image, label = transform(image, label, generator)
        return image, label


def train_transform(
    mean: Sequence[float],
    std: Sequence[float],
    crop: int | tuple[int, int] = 512,
    scale: int = 512,
    *,
    ratio_range: tuple[float, float] = (0.5, 2.0),
    cat_max_ratio: float = 0.75,
    flip_prob: float = 0.5,
    photometric: bool = True,
    ignore_index: int = IGNORE_INDEX,
    generator: torch.Generator | None = None,
) -> Compose:
    """Rein's GTAV training pipeline: rescale, crop, flip, photometric distortion, normalise.

    ``crop`` is square (an int) or ``(height, width)``; ``scale`` is the short side before the
    random ratio (mmseg ``scale=(4 * scale, scale)``).
    """
    steps: list[JointTransform] = [
        RandomRescale(scale, 4 * scale, ratio_range),
        RandomCrop(crop, cat_max_ratio=cat_max_ratio, ignore_index=ignore_index),
        RandomHorizontalFlip(flip_prob),
    ]
    if photometric:
        steps.append(PhotometricDistortion())
    steps.append(Normalize(mean, std))
    return Compose(steps, generator)


def test_transform(mean: Sequence[float], std: Sequence[float]) -> Compose:
    """Evaluation: normalisation only; the label keeps the dataset's full resolution."""
    return Compose([Normalize(mean, std)])
