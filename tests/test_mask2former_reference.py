"""The Mask2Former loss against transformers' own ``Mask2FormerLoss`` (issue 24 item 6): with
no ignored pixel excluded, the same random point draws (the same seed, drawn in the same
order) give the same matches, losses and gradients, at the default bilinear target reads;
``target_sampling="nearest"`` departs from it only through the target masks."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from fishertune.models.heads.mask2former_loss import (
    MaskClassificationLoss,
    semantic_to_mask_targets,
)

transformers = pytest.importorskip("transformers")
from transformers.models.mask2former.modeling_mask2former import (  # noqa: E402
    Mask2FormerConfig,
    Mask2FormerLoss,
)

CLASSES, QUERIES, SIZE, POINTS = 19, 12, 48, 2048


def _inputs() -> tuple[Tensor, Tensor, Tensor]:
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, CLASSES, (2, SIZE // 8, SIZE // 8), generator=generator)
    labels = labels.repeat_interleave(8, 1).repeat_interleave(8, 2)  # regions, not noise
    classes = torch.randn(2, QUERIES, CLASSES + 1, generator=generator)
    masks = torch.randn(2, QUERIES, SIZE // 4, SIZE // 4, generator=generator)
    return labels, classes, masks


def _ours(sampling: str) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    labels, classes, masks = _inputs()
    classes.requires_grad_(True)
    masks.requires_grad_(True)
    targets = semantic_to_mask_targets(labels, CLASSES, 255, exclude_ignored=False)
    loss = MaskClassificationLoss(CLASSES, num_points=POINTS, target_sampling=sampling)
    torch.manual_seed(1)
    values = loss([classes], [masks], targets)
    unweighted = {
        "loss_cross_entropy": values["loss_cls"] / loss.class_weight,
        "loss_mask": values["loss_mask"] / loss.mask_weight,
        "loss_dice": values["loss_dice"] / loss.dice_weight,
    }
    total = values["loss_cls"] + values["loss_mask"] + values["loss_dice"]
    mask_grad, class_grad = torch.autograd.grad(total, [masks, classes])
    return unweighted, mask_grad, class_grad


def _reference() -> tuple[dict[str, Tensor], Tensor, Tensor]:
    labels, classes, masks = _inputs()
    classes.requires_grad_(True)
    masks.requires_grad_(True)
    config = Mask2FormerConfig(num_labels=CLASSES, train_num_points=POINTS)
    weights = {"loss_cross_entropy": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}
    criterion = Mask2FormerLoss(config, weights)
    present = [torch.unique(image) for image in labels]
    mask_labels = [
        (image[None] == classes_[:, None, None]).float()
        for image, classes_ in zip(labels, present, strict=True)
    ]
    torch.manual_seed(1)
    values = criterion(masks, classes, mask_labels, present)
    total = sum(weights[name] * values[name] for name in weights)
    mask_grad, class_grad = torch.autograd.grad(total, [masks, classes])
    return {name: values[name] for name in weights}, mask_grad, class_grad


def test_the_default_loss_equals_transformers_on_the_same_draws() -> None:
    ours, ours_masks, ours_classes = _ours("bilinear")
    want, want_masks, want_classes = _reference()
    for name, value in want.items():
        torch.testing.assert_close(ours[name], value, rtol=1e-5, atol=1e-6, msg=name)
    torch.testing.assert_close(ours_masks, want_masks, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(ours_classes, want_classes, rtol=1e-4, atol=1e-7)


def test_nearest_target_reads_depart_only_through_the_mask_terms() -> None:
    ours, _, _ = _ours("nearest")
    want, _, _ = _reference()
    torch.testing.assert_close(
        ours["loss_cross_entropy"], want["loss_cross_entropy"], rtol=1e-5, atol=1e-6
    )
    assert not torch.isclose(ours["loss_mask"], want["loss_mask"], rtol=1e-6)
