"""Tests of the Segmentor (padding, losses, whole/slide prediction) and sliding-window inference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fishertune.models.heads.linear import LinearHead
from fishertune.models.neck import MultiScaleNeck
from fishertune.models.segmentor import Segmentor
from fishertune.models.sliding_window import slide_inference, window_spans

NUM_CLASSES = 4


class FakeBackbone(nn.Module):
    """A stand-in ViT: a stride-p patchify convolution and four 1×1 "block" projections.

    Like the real wrapper it rejects inputs whose sides are not multiples of ``patch_size``.
    """

    def __init__(self, patch_size: int, embed_dim: int = 6) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.stem = nn.Conv2d(3, embed_dim, patch_size, stride=patch_size)
        self.blocks = nn.ModuleList(nn.Conv2d(embed_dim, embed_dim, 1) for _ in range(4))

    def forward(self, images: Tensor) -> list[Tensor]:
        if images.shape[-2] % self.patch_size or images.shape[-1] % self.patch_size:
            raise ValueError(f"image size {tuple(images.shape[-2:])} not a multiple of the patch")
        x = self.stem(images)
        outs = []
        for block in self.blocks:
            x = torch.tanh(block(x))
            outs.append(x)
        return outs


def make_segmentor(patch: int = 16, mode: str = "resize") -> Segmentor:
    backbone = FakeBackbone(patch)
    neck = MultiScaleNeck(backbone.embed_dim, 5, mode=mode)
    return Segmentor(backbone, neck, LinearHead(neck.out_channels, NUM_CLASSES))


def labels(shape: tuple[int, int, int]) -> Tensor:
    targets = torch.randint(0, NUM_CLASSES, shape)
    targets[0, : shape[1] // 3] = 255
    return targets


@pytest.mark.parametrize("mode", ["resize", "deconv"])
def test_forward_losses_and_backward(mode: str) -> None:
    model = make_segmentor(14, mode)
    losses = model(torch.randn(2, 3, 30, 45), labels((2, 30, 45)))
    assert isinstance(losses, dict)
    assert set(losses) == {"loss_ce"}
    assert torch.isfinite(losses["loss_ce"])
    losses["loss_ce"].backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model.backbone.stem.weight.grad is not None
    assert model.backbone.stem.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(("patch", "size"), [(16, (32, 48)), (16, (33, 50)), (14, (30, 45))])
@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_predict_shape_is_input_size(patch: int, size: tuple[int, int], mode: str) -> None:
    model = make_segmentor(patch).eval()
    scores = model.predict(torch.randn(2, 3, *size), mode=mode, crop_size=20, stride=13)
    assert tuple(scores.shape) == (2, NUM_CLASSES, *size)
    assert torch.isfinite(scores).all()


def test_forward_without_targets_is_differentiable_predict() -> None:
    model = make_segmentor(14).eval()
    images = torch.randn(2, 3, 30, 45)
    scores = model(images)
    assert isinstance(scores, Tensor)
    assert scores.requires_grad
    assert torch.equal(scores.detach(), model.predict(images))


def test_padding_is_bottom_right_zeros_cropped_back() -> None:
    """A 30 × 45 input (p = 14) scores as the top-left of the same input pre-padded to 42 × 56."""
    model = make_segmentor(14).eval()
    images = torch.randn(2, 3, 30, 45)
    padded = F.pad(images, (0, 56 - 45, 0, 42 - 30))
    assert torch.equal(model.predict(images), model.predict(padded)[:, :, :30, :45])


def test_loss_sees_exactly_the_predicted_pixels() -> None:
    """Padded pixels are ignored: the loss is the cross-entropy of predict()'s H × W scores."""
    model = make_segmentor(14).eval()
    images, targets = torch.randn(2, 3, 30, 45), labels((2, 30, 45))
    loss = model(images, targets)
    assert isinstance(loss, dict)
    expected = F.cross_entropy(model.predict(images), targets, ignore_index=255)
    torch.testing.assert_close(loss["loss_ce"], expected)


@pytest.mark.parametrize(("patch", "size"), [(16, (32, 48)), (14, (30, 45))])
def test_slide_with_one_window_equals_whole(patch: int, size: tuple[int, int]) -> None:
    model = make_segmentor(patch).eval()
    images = torch.randn(2, 3, *size)
    whole = model.predict(images)
    assert torch.equal(model.predict(images, mode="slide", crop_size=size, stride=(7, 9)), whole)
    # a crop larger than the image is one window of the image's size (mmseg), not a padded crop
    assert torch.equal(model.predict(images, mode="slide", crop_size=512, stride=341), whole)


def test_predict_keeps_mode_and_disables_grad() -> None:
    model = make_segmentor().train()
    images = torch.randn(2, 3, 32, 32)
    for mode in ("whole", "slide"):
        scores = model.predict(images, mode=mode, crop_size=16, stride=16)
        assert not scores.requires_grad
        assert all(m.training for m in model.modules())
    model.eval()
    model.predict(images)
    assert not any(m.training for m in model.modules())


def test_segmentor_rejects_bad_arguments() -> None:
    model = make_segmentor()
    images = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match="mode must be one of"):
        model.predict(images, mode="tiles")
    with pytest.raises(ValueError, match=r"targets must be \(B, H, W\)"):
        model(images, torch.zeros(2, 16, 16, dtype=torch.long))
    with pytest.raises(ValueError, match=r"images must be \(B, C, H, W\)"):
        model.predict(images[0])
    with pytest.raises(ValueError, match="stride"):
        model.predict(images, mode="slide", crop_size=16, stride=17)
    with pytest.raises(ValueError, match="patch_size must be a positive int"):
        Segmentor(nn.Conv2d(3, 3, 1), model.neck, model.head)


def test_window_spans_by_hand() -> None:
    assert window_spans(10, 4, 3) == [(0, 4), (3, 7), (6, 10)]
    assert window_spans(11, 4, 3) == [(0, 4), (3, 7), (6, 10), (7, 11)]
    assert window_spans(8, 4, 4) == [(0, 4), (4, 8)]
    assert window_spans(4, 4, 1) == [(0, 4)]
    assert window_spans(3, 4, 2) == [(0, 3)]
    assert window_spans(512, 512, 341) == [(0, 512)]
    assert window_spans(1024, 512, 341) == [(0, 512), (341, 853), (512, 1024)]


def test_slide_with_a_pointwise_fn_equals_whole() -> None:
    conv = nn.Conv2d(3, 5, 1)
    images = torch.randn(2, 3, 23, 17)
    with torch.no_grad():
        slid = slide_inference(conv, images, crop_size=(8, 6), stride=(3, 5))
        torch.testing.assert_close(slid, conv(images), rtol=1e-6, atol=1e-6)


def test_slide_averages_overlaps_like_a_hand_reference() -> None:
    """A window-dependent fn (each crop scored by its own mean) against explicit windows."""

    def crop_mean(crop: Tensor) -> Tensor:
        return crop.mean(dim=(2, 3), keepdim=True).expand_as(crop) + crop

    images = torch.randn(1, 2, 10, 8)
    expected = torch.zeros(1, 2, 10, 8)
    count = torch.zeros(10, 8)
    for top, bottom in [(0, 4), (3, 7), (6, 10)]:  # 10 rows, crop 4, stride 3
        for left, right in [(0, 5), (3, 8)]:  # 8 columns, crop 5, stride 3
            crop = images[:, :, top:bottom, left:right]
            expected[:, :, top:bottom, left:right] += crop.mean(dim=(2, 3), keepdim=True) + crop
            count[top:bottom, left:right] += 1
    slid = slide_inference(crop_mean, images, crop_size=(4, 5), stride=3)
    torch.testing.assert_close(slid, expected / count)


def test_slide_inference_rejects_bad_arguments() -> None:
    images = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match=r"stride \(5\) larger than the crop \(4\)"):
        slide_inference(torch.sigmoid, images, crop_size=4, stride=5)
    with pytest.raises(ValueError, match="crop_size must be positive"):
        slide_inference(torch.sigmoid, images, crop_size=(0, 4), stride=1)
    with pytest.raises(ValueError, match="stride must be positive"):
        slide_inference(torch.sigmoid, images, crop_size=4, stride=-1)
    with pytest.raises(ValueError, match="crop_size must be an int or a pair"):
        slide_inference(torch.sigmoid, images, crop_size=(4, 4, 4), stride=2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"fn must return \(B, K, h, w\)"):
        slide_inference(lambda x: x[:, :, :2], images, crop_size=4, stride=4)
    with pytest.raises(ValueError, match="must be positive"):
        window_spans(0, 4, 2)
