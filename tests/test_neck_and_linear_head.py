"""Tests of the multi-scale neck and the linear head (fishertune.models.neck / heads.linear)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from fishertune.models.heads.base import SegmentationHead
from fishertune.models.heads.linear import LinearHead
from fishertune.models.neck import MultiScaleNeck

EMBED = 8
NUM_CLASSES = 5


def stride_p_maps(image_size: tuple[int, int], patch: int, count: int = 4) -> list[Tensor]:
    """``count`` random ViT-like maps (2, EMBED, H/p, W/p)."""
    h, w = image_size[0] // patch, image_size[1] // patch
    return [torch.randn(2, EMBED, h, w) for _ in range(count)]


@pytest.mark.parametrize("mode", ["resize", "deconv"])
@pytest.mark.parametrize("num_inputs", [4, 1])
@pytest.mark.parametrize(
    ("patch", "image_size"),
    [(16, (64, 96)), (16, (80, 48)), (14, (70, 42)), (14, (56, 98)), (14, (14, 14))],
)
def test_pyramid_sizes_and_widths(
    mode: str, num_inputs: int, patch: int, image_size: tuple[int, int]
) -> None:
    widths = (3, 4, 5, 6)
    neck = MultiScaleNeck(EMBED, widths, num_inputs=num_inputs, mode=mode)
    outputs = neck(stride_p_maps(image_size, patch, num_inputs), image_size)
    assert neck.out_channels == widths
    assert len(outputs) == 4
    for out, width, stride in zip(outputs, widths, (4, 8, 16, 32), strict=True):
        expected = (2, width, math.ceil(image_size[0] / stride), math.ceil(image_size[1] / stride))
        assert tuple(out.shape) == expected
        assert torch.isfinite(out).all()


def test_deconv_needs_no_resize_for_patch_16(monkeypatch: pytest.MonkeyPatch) -> None:
    """ViTDet's ops land exactly on strides 4/8/16/32 for p = 16, odd grids included."""

    def forbidden(*args: object, **kwargs: object) -> Tensor:
        raise AssertionError("unexpected resize")

    neck = MultiScaleNeck(EMBED, 4, mode="deconv")
    maps = stride_p_maps((80, 48), 16)  # a 5 × 3 grid: the stride-32 level is ceil(5/2) × 2
    monkeypatch.setattr(F, "interpolate", forbidden)
    sizes = [tuple(out.shape[-2:]) for out in neck(maps, (80, 48))]
    assert sizes == [(20, 12), (10, 6), (5, 3), (3, 2)]


def test_resize_mode_equals_resize_then_project() -> None:
    """Whatever order the neck uses internally, it equals bilinear resize then a 1×1 conv."""
    neck = MultiScaleNeck(EMBED, 6, mode="resize")
    maps = stride_p_maps((70, 42), 14)
    outputs = neck(maps, (70, 42))
    for i, (x, out) in enumerate(zip(maps, outputs, strict=True)):
        proj = neck.levels[i].proj
        resized = F.interpolate(x, size=out.shape[-2:], mode="bilinear", align_corners=False)
        torch.testing.assert_close(out, F.conv2d(resized, proj.weight, proj.bias))


def test_single_input_feeds_every_level() -> None:
    neck = MultiScaleNeck(EMBED, 6, num_inputs=1, mode="resize")
    x = stride_p_maps((64, 64), 16, 1)[0]
    proj = neck.levels[2].proj  # stride 16 = the input's stride: no resampling at all
    torch.testing.assert_close(neck([x], (64, 64))[2], F.conv2d(x, proj.weight, proj.bias))


@pytest.mark.parametrize("mode", ["resize", "deconv"])
def test_neck_backward_reaches_all_levels(mode: str) -> None:
    neck = MultiScaleNeck(EMBED, 4, mode=mode)
    maps = [m.requires_grad_() for m in stride_p_maps((56, 42), 14)]
    torch.stack([out.square().sum() for out in neck(maps, (56, 42))]).sum().backward()
    assert all(m.grad is not None and m.grad.abs().sum() > 0 for m in maps)
    assert all(p.grad is not None for p in neck.parameters())


def test_neck_rejects_bad_configuration() -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        MultiScaleNeck(EMBED, 4, mode="fpn")
    with pytest.raises(ValueError, match="num_inputs must be 1 or 4"):
        MultiScaleNeck(EMBED, 4, num_inputs=2)
    with pytest.raises(ValueError, match="out_channels"):
        MultiScaleNeck(EMBED, (4, 4, 4))
    with pytest.raises(ValueError, match="in_channels"):
        MultiScaleNeck(0, 4)


def test_neck_rejects_bad_inputs() -> None:
    neck = MultiScaleNeck(EMBED, 4)
    maps = stride_p_maps((64, 64), 16)
    with pytest.raises(ValueError, match="expects 4 feature maps, got 3"):
        neck(maps[:3], (64, 64))
    with pytest.raises(ValueError, match=r"must be \(B, 8, h, w\)"):
        neck([*maps[:3], torch.randn(2, 7, 4, 4)], (64, 64))
    with pytest.raises(ValueError, match=r"must be \(B, 8, h, w\)"):
        neck([*maps[:3], torch.randn(8, 4, 4)], (64, 64))
    with pytest.raises(ValueError, match="share batch size and spatial size"):
        neck([*maps[:3], torch.randn(2, EMBED, 4, 5)], (64, 64))
    with pytest.raises(ValueError, match="image_size"):
        neck(maps, (0, 64))


def pyramid(batch: int = 2, widths: tuple[int, ...] = (3, 4, 5, 6)) -> list[Tensor]:
    """Random stride-4/8/16/32 maps of a 64 × 56 image."""
    return [
        torch.randn(batch, c, math.ceil(64 / s), math.ceil(56 / s))
        for c, s in zip(widths, (4, 8, 16, 32), strict=True)
    ]


@pytest.mark.parametrize("norm", ["bn", "ln"])
def test_linear_head_shapes(norm: str) -> None:
    head = LinearHead((3, 4, 5, 6), NUM_CLASSES, norm=norm)
    features = pyramid()
    assert isinstance(head, SegmentationHead)
    assert tuple(head(features).shape) == (2, NUM_CLASSES, 16, 14)
    assert tuple(head.predict(features, (64, 56)).shape) == (2, NUM_CLASSES, 64, 56)
    assert tuple(head.predict(features, (61, 53)).shape) == (2, NUM_CLASSES, 61, 53)


def test_linear_head_is_upsample_concat_norm_conv() -> None:
    """An independent computation of the head with ``norm="ln"``."""
    head = LinearHead((3, 4, 5, 6), NUM_CLASSES, norm="ln")
    with torch.no_grad():
        head.norm.weight.uniform_(0.5, 1.5)
        head.norm.bias.uniform_(-0.5, 0.5)
    features = pyramid()
    up = [F.interpolate(x, size=(16, 14), mode="bilinear", align_corners=False) for x in features]
    x = torch.cat(up, dim=1).permute(0, 2, 3, 1)
    normed = F.layer_norm(x, (18,), head.norm.weight, head.norm.bias, eps=1e-6)
    expected = F.conv2d(normed.permute(0, 3, 1, 2), head.classifier.weight, head.classifier.bias)
    torch.testing.assert_close(head(features), expected)


def test_subpixel_head_predicts_each_block_of_pixels_from_one_feature_vector() -> None:
    """Logit ``(k, r·i + a, r·j + b)`` is channel ``k·r² + a·r + b`` of the 1×1 convolution at
    ``(i, j)``, computed here by an explicit loop over the blocks."""
    r = 3
    head = LinearHead((3, 4, 5, 6), NUM_CLASSES, norm="ln", subpixel=r)
    features = pyramid()
    up = [F.interpolate(x, size=(16, 14), mode="bilinear", align_corners=False) for x in features]
    x = torch.cat(up, dim=1).permute(0, 2, 3, 1)
    normed = F.layer_norm(x, (18,), head.norm.weight, head.norm.bias, eps=1e-6)
    channels = normed @ head.classifier.weight.view(NUM_CLASSES * r * r, 18).T
    channels = channels + head.classifier.bias  # (B, 16, 14, K·r²)
    expected = torch.empty(2, NUM_CLASSES, 16 * r, 14 * r)
    for a in range(r):
        for b in range(r):
            block = channels[..., [k * r * r + a * r + b for k in range(NUM_CLASSES)]]
            expected[:, :, a::r, b::r] = block.permute(0, 3, 1, 2)
    torch.testing.assert_close(head(features), expected)
    assert tuple(head.predict(features, (64, 56)).shape) == (2, NUM_CLASSES, 64, 56)
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="subpixel must be a positive int"):
            LinearHead((3,), NUM_CLASSES, subpixel=bad)  # type: ignore[arg-type]


def test_the_head_can_work_at_a_coarser_level() -> None:
    """``level=1``: every map resized to level 1's size (8 × 7 here) before the classifier."""
    head = LinearHead((3, 4, 5, 6), NUM_CLASSES, norm="ln", subpixel=2, level=1)
    features = pyramid()
    size = tuple(features[1].shape[-2:])
    up = [F.interpolate(x, size=size, mode="bilinear", align_corners=False) for x in features]
    x = torch.cat(up, dim=1).permute(0, 2, 3, 1)
    normed = F.layer_norm(x, (18,), head.norm.weight, head.norm.bias, eps=1e-6)
    logits = F.conv2d(normed.permute(0, 3, 1, 2), head.classifier.weight, head.classifier.bias)
    torch.testing.assert_close(head(features), F.pixel_shuffle(logits, 2))
    assert tuple(head(features).shape[-2:]) == (2 * size[0], 2 * size[1])
    with pytest.raises(ValueError, match=r"level must be an int in \[0, 4\)"):
        LinearHead((3, 4, 5, 6), NUM_CLASSES, level=4)


def test_loss_is_masked_cross_entropy() -> None:
    head = LinearHead((3, 4, 5, 6), NUM_CLASSES).eval()
    features = pyramid()
    targets = torch.randint(0, NUM_CLASSES, (2, 64, 56))
    targets[0, :40] = 255
    targets[1, :, 50:] = 255
    loss = head.losses(features, targets)["loss_ce"]

    logits = head.predict(features, (64, 56))
    log_probs = logits.log_softmax(dim=1).permute(0, 2, 3, 1)  # (B, H, W, K)
    valid = targets != 255
    picked = log_probs[valid].gather(1, targets[valid].unsqueeze(1))
    torch.testing.assert_close(loss, -picked.mean())


def test_all_ignored_batch_gives_zero_loss() -> None:
    head = LinearHead((3, 4, 5, 6), NUM_CLASSES)
    loss = head.losses(pyramid(), torch.full((2, 64, 56), 255))["loss_ce"]
    assert loss.item() == 0.0
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in head.parameters())


def test_linear_head_rejects_bad_inputs() -> None:
    head = LinearHead((3, 4, 5, 6), NUM_CLASSES)
    with pytest.raises(ValueError, match="expects 4 feature maps, got 3"):
        head(pyramid()[:3])
    with pytest.raises(ValueError, match=r"feature map 1 must be \(B, 4, h, w\)"):
        head(pyramid(widths=(3, 5, 5, 6)))
    with pytest.raises(ValueError, match=r"targets must be \(B, H, W\)"):
        head.losses(pyramid(), torch.zeros(64, 56, dtype=torch.long))
    with pytest.raises(ValueError, match="norm must be one of"):
        LinearHead((3,), NUM_CLASSES, norm="gn")
    with pytest.raises(ValueError, match="in_channels"):
        LinearHead((), NUM_CLASSES)
    with pytest.raises(ValueError, match="dropout"):
        LinearHead((3,), NUM_CLASSES, dropout=1.0)
