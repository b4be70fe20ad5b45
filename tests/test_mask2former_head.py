"""The Mask2Former head: shapes, losses, gradients, ignored pixels, external queries, paper size."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

from fishertune.models.heads.base import SegmentationHead
from fishertune.models.heads.mask2former import Mask2FormerHead
from fishertune.models.heads.mask2former_loss import (
    MaskClassificationLoss,
    point_sample,
    semantic_to_mask_targets,
)

CHANNELS = (8, 16, 24, 32)
STRIDES = (4, 8, 16, 32)
NUM_CLASSES = 5
SIZE = 64
HIDDEN = 32
QUERIES = 4


def tiny_head(**options: Any) -> Mask2FormerHead:
    torch.manual_seed(0)
    settings: dict[str, Any] = {
        "hidden_dim": HIDDEN,
        "num_queries": QUERIES,
        "pixel_decoder_layers": 2,
        "decoder_layers": 3,
        "pixel_decoder_ffn_dim": 64,
        "decoder_ffn_dim": 64,
        "train_num_points": 64,
    }
    settings.update(options)
    return Mask2FormerHead(CHANNELS, NUM_CLASSES, **settings)


def random_features(batch: int = 2, requires_grad: bool = False) -> list[Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [
        torch.randn(batch, c, SIZE // s, SIZE // s, generator=generator).requires_grad_(
            requires_grad
        )
        for c, s in zip(CHANNELS, STRIDES, strict=True)
    ]


def total(losses: dict[str, Tensor]) -> Tensor:
    return torch.stack(list(losses.values())).sum()


def two_targets() -> Tensor:
    """Image 0: classes 0 | 1 left/right; image 1: 0 over 2, its top eighth ignored."""
    targets = torch.zeros(2, SIZE, SIZE, dtype=torch.long)
    targets[0, :, SIZE // 2 :] = 1
    targets[1, SIZE // 2 :] = 2
    targets[1, : SIZE // 8] = 255
    return targets


def test_implements_the_head_protocol() -> None:
    head = tiny_head()
    assert isinstance(head, SegmentationHead)
    assert (head.num_classes, head.ignore_index) == (NUM_CLASSES, 255)


@pytest.mark.parametrize("image_size", [(SIZE, SIZE), (50, 70)])
def test_predict_gives_class_scores_at_image_size(image_size: tuple[int, int]) -> None:
    scores = tiny_head().predict(random_features(), image_size)
    assert scores.shape == (2, NUM_CLASSES, *image_size)
    assert torch.isfinite(scores).all()
    # Σ_k p(k) · sigmoid(mask) over the queries lies in [0, num_queries]
    assert (scores >= 0).all()
    assert (scores.sum(1) <= QUERIES).all()


def test_wrong_features_are_rejected() -> None:
    features = random_features()
    with pytest.raises(ValueError, match="expected 4 maps"):
        tiny_head().predict(features[:3], (SIZE, SIZE))
    with pytest.raises(ValueError, match="expected 4 maps"):
        tiny_head().predict([features[1], *features[1:]], (SIZE, SIZE))


def test_losses_are_finite_and_reach_every_parameter_and_the_features() -> None:
    head = tiny_head()
    features = random_features(requires_grad=True)
    losses = head.losses(features, two_targets())
    assert set(losses) == {"loss_cls", "loss_mask", "loss_dice"}
    assert all(
        value.dim() == 0 and torch.isfinite(value) and value > 0 for value in losses.values()
    )
    total(losses).backward()
    for feature in features:
        assert feature.grad is not None
        assert feature.grad.abs().sum() > 0
    assert all(param.grad is not None for param in head.parameters())
    # Deformable DETR zero-initialises the offset and attention-weight projections, which blocks
    # the gradient to the pixel decoder's level embeddings until they have moved once.
    torch.optim.SGD(head.parameters(), lr=1e-2).step()
    head.zero_grad()
    total(head.losses(features, two_targets())).backward()
    silent = [
        name
        for name, param in head.named_parameters()
        if param.grad is None or param.grad.abs().sum() == 0
    ]
    assert silent == []


def test_overfits_two_tiny_images() -> None:
    head = tiny_head()
    features, targets = random_features(), two_targets()
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-3)
    history = []
    for _ in range(40):
        loss = total(head.losses(features, targets))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert sum(history[-3:]) < 0.5 * sum(history[:3])
    with torch.no_grad():
        predicted = head.predict(features, (SIZE, SIZE)).argmax(1)
    labelled = targets != 255
    assert (predicted[labelled] == targets[labelled]).float().mean() > 0.9


def test_all_ignored_target_has_no_masks_and_finite_losses() -> None:
    head = tiny_head()
    targets = torch.full((2, SIZE, SIZE), 255, dtype=torch.long)
    losses = head.losses(random_features(), targets)
    assert losses["loss_mask"] == 0
    assert losses["loss_dice"] == 0
    assert torch.isfinite(losses["loss_cls"])
    assert losses["loss_cls"] > 0
    total(losses).backward()
    assert all(param.grad is not None for param in head.parameters())


def test_semantic_targets_become_one_mask_per_present_class() -> None:
    labels = torch.tensor([[[3, 3, 255], [0, 3, 255]], [[255, 255, 255], [255, 255, 255]]])
    targets = semantic_to_mask_targets(labels, NUM_CLASSES, 255)
    assert targets.labels[0].tolist() == [0, 3]
    assert targets.masks[0].tolist() == [[[0, 0, 0], [1, 0, 0]], [[1, 1, 0], [0, 1, 0]]]
    assert targets.labels[1].numel() == 0
    assert targets.masks[1].shape == (0, 2, 3)
    assert targets.weights[:, 0].tolist() == (labels != 255).float().tolist()
    background = semantic_to_mask_targets(labels, NUM_CLASSES, 255, exclude_ignored=False)
    assert (background.weights == 1).all()
    with pytest.raises(ValueError, match="must lie in"):
        semantic_to_mask_targets(torch.full((1, 2, 2), NUM_CLASSES), NUM_CLASSES, 255)


@pytest.mark.parametrize("exclude_ignored", [True, False])
def test_ignored_pixels_do_not_influence_the_mask_losses(exclude_ignored: bool) -> None:
    """Mask logits changed only over ignored pixels leave the losses unchanged.

    Checked on the criterion with given logits: through the whole head every output pixel
    depends on every input pixel (deformable and global attention, 3×3 convolutions), so a
    feature change confined to ignored pixels cannot be made. The random points are the same
    in both evaluations (same seed); ignored points have weight 0 and are never picked by the
    importance sampling, so the losses agree exactly. With ignored pixels counted as background
    (Rein's mmseg behaviour) the same change does alter the mask losses.
    """
    targets = torch.zeros(2, SIZE, SIZE, dtype=torch.long)
    targets[:, SIZE // 4 :, : SIZE // 4] = 1
    targets[1, : SIZE // 4] = 2
    targets[:, :, SIZE // 2 :] = 255  # right half ignored
    mask_targets = semantic_to_mask_targets(
        targets, NUM_CLASSES, 255, exclude_ignored=exclude_ignored
    )
    criterion = MaskClassificationLoss(NUM_CLASSES, num_points=256)
    generator = torch.Generator().manual_seed(2)
    stages = 2
    class_logits = [torch.randn(2, QUERIES, NUM_CLASSES + 1, generator=generator)] * stages
    mask_logits = [torch.randn(2, QUERIES, SIZE // 4, SIZE // 4, generator=generator)] * stages
    changed = [logits.clone() for logits in mask_logits]
    # Mask columns ≥ 10 of 16 lie at least two cells inside the ignored half: no counted point
    # (nearest pixel in the left half, x < 0.5) reads them through bilinear sampling.
    for logits in changed:
        logits[..., 10:] = 20 * torch.randn(logits[..., 10:].shape, generator=generator)

    torch.manual_seed(3)
    before = criterion(class_logits, mask_logits, mask_targets)
    torch.manual_seed(3)
    after = criterion(class_logits, changed, mask_targets)
    if exclude_ignored:  # the matching does not change either, hence neither does loss_cls
        torch.testing.assert_close(after, before)
    else:
        assert not torch.isclose(after["loss_mask"], before["loss_mask"])


def test_external_queries_replace_the_learned_ones_and_receive_gradients() -> None:
    head = tiny_head()
    features = random_features()
    generator = torch.Generator().manual_seed(4)
    queries = torch.randn(2, QUERIES, HIDDEN, generator=generator, requires_grad=True)
    query_pos = torch.randn(QUERIES, HIDDEN, generator=generator, requires_grad=True)

    with torch.no_grad():
        learned = head.predict(features, (SIZE, SIZE))
        external = head.predict(features, (SIZE, SIZE), queries=queries, query_pos=query_pos)
        broadcast = head.predict(
            features,
            (SIZE, SIZE),
            queries=queries,
            query_pos=query_pos.expand(2, -1, -1),
        )
    assert not torch.allclose(learned, external)
    torch.testing.assert_close(broadcast, external)

    losses = head.losses(features, two_targets(), queries=queries, query_pos=query_pos)
    total(losses).backward()
    assert queries.grad is not None
    assert queries.grad.abs().sum() > 0
    assert query_pos.grad is not None
    assert query_pos.grad.abs().sum() > 0
    assert head.transformer.queries_features.weight.grad is None
    assert head.transformer.queries_embedder.weight.grad is None

    with pytest.raises(ValueError, match="queries must be"):
        head.predict(features, (SIZE, SIZE), queries=torch.zeros(2, QUERIES + 1, HIDDEN))


def test_paper_settings_build() -> None:
    """Rein's head on a ViT-L neck (4 × 1024 channels), 19 Cityscapes classes."""
    head = Mask2FormerHead((1024,) * 4, 19)
    assert (head.hidden_dim, head.num_queries) == (256, 100)
    assert len(head.pixel_decoder.encoder.layers) == 6
    assert len(head.transformer.decoder.layers) == 9
    criterion = head.criterion
    assert (criterion.class_weight, criterion.mask_weight, criterion.dice_weight) == (2, 5, 5)
    assert criterion.class_weights[-1].item() == pytest.approx(0.1)
    assert (criterion.num_points, criterion.oversample_ratio) == (12544, 3.0)
    assert criterion.importance_sample_ratio == 0.75
    count = sum(param.numel() for param in head.parameters())
    print(f"Mask2Former head, paper settings: {count:,} parameters")
    assert count == 20_565_204


def test_target_masks_are_read_bilinearly_by_default_as_mask2former() -> None:
    """A point halfway between a 0 and a 1 pixel reads 0.5 (bilinear, Mask2Former's
    ``point_sample`` of float masks) unless ``target_sampling="nearest"``; the loss follows."""
    mask = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])
    halfway = torch.tensor([[[0.5, 0.5]]])
    assert point_sample(mask, halfway).item() == pytest.approx(0.5)
    assert point_sample(mask, halfway, mode="nearest").item() in (0.0, 1.0)
    assert MaskClassificationLoss(NUM_CLASSES).target_sampling == "bilinear"
    assert tiny_head().criterion.target_sampling == "bilinear"
    assert tiny_head(target_sampling="nearest").criterion.target_sampling == "nearest"
    targets = semantic_to_mask_targets(two_targets(), NUM_CLASSES, 255)
    generator = torch.Generator().manual_seed(5)
    classes = [torch.randn(2, QUERIES, NUM_CLASSES + 1, generator=generator)]
    masks = [torch.randn(2, QUERIES, SIZE // 4, SIZE // 4, generator=generator)]
    losses = {}
    for mode in ("bilinear", "nearest"):
        torch.manual_seed(6)
        criterion = MaskClassificationLoss(NUM_CLASSES, num_points=64, target_sampling=mode)
        losses[mode] = criterion(classes, masks, targets)["loss_mask"]
    assert not torch.isclose(losses["bilinear"], losses["nearest"])
    with pytest.raises(ValueError, match="target_sampling must be one of"):
        MaskClassificationLoss(NUM_CLASSES, target_sampling="area")
