"""Joint image/label training transforms (mmseg's GTAV pipeline in torch ops)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from fishertune.data import transforms as T

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _pair(height: int = 96, width: int = 160, seed: int = 0) -> tuple[Tensor, Tensor]:
    """A random uint8 image and a blocky label over {0, 5, 255}."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
    values = torch.tensor([0, 5, 255])
    blocks = torch.randint(0, 3, (height // 8 + 1, width // 8 + 1), generator=generator)
    label = values[blocks].repeat_interleave(8, 0).repeat_interleave(8, 1)[:height, :width]
    return image, label.contiguous()


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(
    ("height", "width", "ratio", "expected"),
    [
        (1052, 1914, 1.0, (512, 932)),  # GTAV: short side = 512 * r
        (1052, 1914, 0.5, (256, 466)),
        (1024, 2048, 2.0, (1024, 2048)),  # Cityscapes at r = 2: short 1024
        (100, 1000, 1.0, (205, 2048)),  # aspect > 4: the long side (2048 * r) limits
    ],
)
def test_rescale_size_follows_mmcv_rule(
    height: int, width: int, ratio: float, expected: tuple[int, int]
) -> None:
    assert T.RandomRescale(512).output_size(height, width, ratio) == expected


def test_rescale_shapes_dtypes_and_label_values() -> None:
    image, label = _pair()
    rescale = T.RandomRescale(64, ratio_range=(0.5, 2.0))
    generator = _gen()
    shorts = set()
    for _ in range(20):
        out_image, out_label = rescale(image, label, generator)
        assert out_image.dtype == torch.uint8
        assert out_label.dtype == torch.int64
        assert out_image.shape[-2:] == out_label.shape
        short = min(out_label.shape)
        assert 32 <= short <= 128
        shorts.add(short)
        assert set(out_label.flatten().tolist()) <= {0, 5, 255}
        ratio = out_label.shape[1] / out_label.shape[0]
        assert ratio == pytest.approx(160 / 96, rel=0.02)
    assert len(shorts) > 5


def test_resize_pair_label_is_nearest_neighbour() -> None:
    label = torch.arange(12, dtype=torch.int64).view(3, 4)
    image = torch.zeros(3, 3, 4, dtype=torch.uint8)
    _, up = T.resize_pair(image, label, (6, 8))
    assert torch.equal(up, label.repeat_interleave(2, 0).repeat_interleave(2, 1))
    _, down = T.resize_pair(image, up, (3, 4))
    assert torch.equal(down, label)


def test_crop_shape_padding_and_values() -> None:
    image, label = _pair(40, 300)
    out_image, out_label = T.RandomCrop(64)(image, label, _gen())
    assert out_image.shape == (3, 64, 64)
    assert out_label.shape == (64, 64)
    assert out_image.dtype == torch.uint8
    assert out_label.dtype == torch.int64
    assert torch.all(out_label[40:] == 255)
    assert torch.all(out_image[:, 40:] == 0)
    assert set(out_label.flatten().tolist()) <= {0, 5, 255}


def test_crop_is_the_same_window_in_image_and_label() -> None:
    label = torch.arange(100 * 120, dtype=torch.int64).view(100, 120) % 19
    image = (label % 256).to(torch.uint8).expand(3, -1, -1).contiguous()
    out_image, out_label = T.RandomCrop(32, cat_max_ratio=1.0)(image, label, _gen(3))
    assert torch.equal(out_image[0].long(), out_label)


def test_crop_rejects_a_window_dominated_by_one_class() -> None:
    # left half all class 1 (a crop there has one class), right half mixed 2/3.
    label = torch.ones(32, 256, dtype=torch.int64)
    label[:, 128:] = torch.tensor([2, 3]).repeat(32, 64)
    image = torch.zeros(3, 32, 256, dtype=torch.uint8)
    crop = T.RandomCrop((32, 32), cat_max_ratio=0.75)
    unchecked = T.RandomCrop((32, 32), cat_max_ratio=1.0)
    dominated = 0
    for seed in range(50):
        _, out = crop(image, label, _gen(seed))
        counts = torch.bincount(out.flatten())
        dominated += int(counts.max()) / out.numel() >= 0.75
    # Without the check about half the crops are pure class 1; with ten retries almost none.
    assert dominated <= 2
    free_pure = sum(
        bool(torch.all(unchecked(image, label, _gen(seed))[1] == 1)) for seed in range(50)
    )
    assert free_pure >= 15


def test_crop_ignores_ignore_index_when_counting() -> None:
    label = torch.full((16, 16), 255, dtype=torch.int64)
    label[:, :4] = 0
    label[:, 4:8] = 1
    assert T.RandomCrop(16)._acceptable(label)
    label[:, 4:8] = 0
    assert not T.RandomCrop(16)._acceptable(label)


def test_flip_flips_both() -> None:
    image, label = _pair()
    flip = T.RandomHorizontalFlip(p=1.0)
    out_image, out_label = flip(image, label, _gen())
    assert torch.equal(out_image, image.flip(-1))
    assert torch.equal(out_label, label.flip(-1))
    same_image, same_label = T.RandomHorizontalFlip(p=0.0)(image, label, _gen())
    assert torch.equal(same_image, image)
    assert torch.equal(same_label, label)


def test_flip_probability() -> None:
    image, label = _pair(8, 8)
    flip = T.RandomHorizontalFlip(0.5)
    generator = _gen()
    flips = sum(not torch.equal(flip(image, label, generator)[0], image) for _ in range(400))
    assert 150 < flips < 250


def test_photometric_keeps_uint8_and_label() -> None:
    image, label = _pair()
    distort = T.PhotometricDistortion()
    generator = _gen()
    changed = 0
    for _ in range(20):
        out_image, out_label = distort(image, label, generator)
        assert out_image.dtype == torch.uint8
        assert out_image.shape == image.shape
        assert out_label is label
        changed += not torch.equal(out_image, image)
    assert changed >= 15


def test_saturation_keeps_hue_and_value() -> None:
    image = torch.tensor([[200, 10, 0], [100, 50, 255], [50, 90, 128]], dtype=torch.uint8)
    image = image.view(3, 3, 1)
    grey = torch.full((3, 1, 1), 77, dtype=torch.uint8)
    assert torch.equal(T.PhotometricDistortion._saturate(grey, 1.5), grey)
    less = T.PhotometricDistortion._saturate(image, 0.5)
    assert torch.equal(less.amax(0), image.amax(0))
    # (200, 100, 50) at half saturation: every channel moves halfway to the maximum
    assert less[:, 0, 0].tolist() == [200, 150, 125]
    more = T.PhotometricDistortion._saturate(image, 100.0)
    assert int(more.amin(0).min()) == 0


def test_normalize_equals_formula() -> None:
    image, label = _pair()
    out_image, out_label = T.Normalize(MEAN, STD)(image, label)
    expected = (image.float() / 255 - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(
        3, 1, 1
    )
    assert out_image.dtype == torch.float32
    torch.testing.assert_close(out_image, expected)
    assert out_label is label


def test_train_transform_output_and_label_values() -> None:
    image, label = _pair(200, 360)
    transform = T.train_transform(MEAN, STD, crop=64, scale=96)
    generator = _gen()
    for _ in range(10):
        out_image, out_label = transform(image, label, generator)
        assert out_image.shape == (3, 64, 64)
        assert out_image.dtype == torch.float32
        assert out_label.shape == (64, 64)
        assert out_label.dtype == torch.int64
        assert set(out_label.flatten().tolist()) <= {0, 5, 255}


def test_train_transform_reproducible_with_seed() -> None:
    image, label = _pair(200, 360)
    first = T.train_transform(MEAN, STD, crop=64, scale=96, generator=_gen(7))
    second = T.train_transform(MEAN, STD, crop=64, scale=96, generator=_gen(7))
    for _ in range(5):
        a_image, a_label = first(image, label)
        b_image, b_label = second(image, label)
        assert torch.equal(a_image, b_image)
        assert torch.equal(a_label, b_label)
    other = T.train_transform(MEAN, STD, crop=64, scale=96)
    c_image, _ = other(image, label, _gen(8))
    d_image, _ = other(image, label, _gen(7))
    assert not torch.equal(c_image, d_image)


def test_call_generator_overrides_compose_generator() -> None:
    image, label = _pair(200, 360)
    built = T.train_transform(MEAN, STD, crop=64, scale=96, generator=_gen(1))
    plain = T.train_transform(MEAN, STD, crop=64, scale=96)
    assert torch.equal(built(image, label, _gen(5))[0], plain(image, label, _gen(5))[0])


def test_test_transform_only_normalises() -> None:
    image, label = _pair()
    out_image, out_label = T.test_transform(MEAN, STD)(image, label)
    assert out_image.shape == image.shape
    assert out_image.dtype == torch.float32
    assert torch.equal(out_label, label)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="short"):
        T.RandomRescale(512, 256)
    with pytest.raises(ValueError, match="ratio_range"):
        T.RandomRescale(512, ratio_range=(2.0, 1.0))
    with pytest.raises(ValueError, match="crop size"):
        T.RandomCrop(0)
    with pytest.raises(ValueError, match="std"):
        T.Normalize(MEAN, (0.2, 0.0, 0.2))


def test_without_generator_uses_the_global_rng() -> None:
    # DataLoader workers rely on this: torch seeds each worker's global RNG.
    image, label = _pair(200, 360)
    transform = T.train_transform(MEAN, STD, crop=64, scale=96)
    torch.manual_seed(3)
    first = transform(image, label)
    torch.manual_seed(3)
    second = transform(image, label)
    assert torch.equal(first[0], second[0])
    assert torch.equal(first[1], second[1])
