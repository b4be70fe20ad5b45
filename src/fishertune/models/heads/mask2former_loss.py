"""Mask2Former's training loss for semantic label maps, with ignored pixels left out.

Hungarian matching on class + mask-BCE + dice costs and point-sampled mask losses with
uncertainty-based importance sampling (Cheng et al., "Masked-attention Mask Transformer for
Universal Image Segmentation", CVPR 2022), at the weights Rein uses (class 2.0 with no-object
weight 0.1, mask BCE 5.0, dice 5.0, 12544 points, oversampling 3.0, importance ratio 0.75).

transformers' ``Mask2FormerHungarianMatcher`` and ``Mask2FormerLoss`` average over every sampled
point, so an ignored pixel could only enter as a negative of every mask (what Mask2Former, mmseg
and transformers' image processor do: the class set leaves ``ignore_index`` out and each mask is
its class region). Here every label map also yields a pixel weight map, 0 on ignored pixels when
``exclude_ignored`` (the head's ``ignore_pixels="exclude"``; its default, ``"background"``, is
the paper's), and the matching costs, the importance sampling and the mask losses all use it: a
point on an ignored pixel is never picked by importance sampling and adds nothing to the BCE or
dice terms. With ``exclude_ignored=False`` the weights are all 1 and the loss is Mask2Former's.
Target masks are read at each point bilinearly (``target_sampling="bilinear"``, as
Mask2Former, mmdet and transformers do), or at the nearest pixel (``"nearest"``); pixel
weights always at the nearest pixel, so a point counts fully or not at all and, without
ignored pixels, every weight is exactly 1 (a bilinear read with zero padding would weigh the
points within half a pixel of the border 0.25–1): the loss then equals transformers'
``Mask2FormerLoss`` on the same point draws (tested).

The mask count that normalises the mask losses is, as in Mask2Former and transformers, the
mean count per process over all processes (all-reduced under ``torch.distributed``, at least
1), so the averaged gradients are those of the whole batch; every process must then call the
loss for its micro-batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from fishertune.process_group import reduce_mean

TARGET_SAMPLING = ("bilinear", "nearest")
"""How target masks are read at the sampled points (pixel weights: always the nearest)."""

Matches = list[tuple[Tensor, Tensor]]
"""Per image, (query indices, target indices) of the matched pairs."""


@dataclass(frozen=True)
class MaskTargets:
    """Mask-classification targets of a batch of semantic label maps.

    ``labels[b]`` ``(n_b,)`` are the classes present in image ``b`` (ascending), ``masks[b]``
    ``(n_b, H, W)`` their binary regions, ``weights`` ``(B, 1, H, W)`` 1 where a pixel counts in
    the mask losses and 0 where it does not.
    """

    labels: list[Tensor]
    masks: list[Tensor]
    weights: Tensor


def semantic_to_mask_targets(
    targets: Tensor, num_classes: int, ignore_index: int, *, exclude_ignored: bool = True
) -> MaskTargets:
    """One binary mask per class present in each ``(B, H, W)`` label map, ``ignore_index`` excluded.

    Ignored pixels belong to no mask; with ``exclude_ignored`` their weight is 0 (they do not
    count in the mask losses), otherwise 1 (they are a negative of every mask, as in Mask2Former).
    """
    if targets.dim() != 3:
        raise ValueError(f"targets must be (B, H, W) label maps, got shape {tuple(targets.shape)}")
    labelled = targets != ignore_index
    if bool((labelled & ((targets < 0) | (targets >= num_classes))).any()):
        raise ValueError(f"target labels must lie in [0, {num_classes}) or be {ignore_index}")
    labels = [torch.unique(image[image != ignore_index]) for image in targets]
    masks = [
        (image[None] == present[:, None, None]).float()
        for image, present in zip(targets, labels, strict=True)
    ]
    weights = labelled if exclude_ignored else torch.ones_like(labelled)
    return MaskTargets(labels, masks, weights[:, None].float())


def _mean_mask_count(targets: MaskTargets, device: torch.device) -> float:
    """The batch's target masks per process, over all processes (at least 1)."""
    count = torch.tensor(float(sum(len(labels) for labels in targets.labels)), device=device)
    return max(float(reduce_mean(count)), 1.0)


def point_sample(maps: Tensor, points: Tensor, mode: str = "bilinear") -> Tensor:
    """Values ``(N, C, P)`` of ``maps`` ``(N, C, H, W)`` at ``points`` ``(N, P, 2)`` in [0, 1]²."""
    grid = 2.0 * points.to(maps.dtype)[:, :, None] - 1.0
    return F.grid_sample(maps, grid, mode=mode, align_corners=False)[..., 0]


class MaskClassificationLoss(nn.Module):
    """Mask2Former's set-prediction loss over every decoder stage, ignore-aware.

    ``forward`` takes the class logits ``(B, Q, K + 1)`` (last = no object) and mask logits
    ``(B, Q, h, w)`` of each decoder stage (the auxiliary ones and the final one), matches each
    stage to the targets on its own and returns the weighted losses summed over the stages:
    ``loss_cls`` (cross-entropy, no-object class down-weighted), ``loss_mask`` (point BCE) and
    ``loss_dice``.
    """

    class_weights: Tensor

    def __init__(
        self,
        num_classes: int,
        *,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        no_object_weight: float = 0.1,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        target_sampling: str = "bilinear",
    ) -> None:
        super().__init__()
        if not 0.0 <= importance_sample_ratio <= 1.0 or oversample_ratio < 1.0:
            raise ValueError("need 0 <= importance_sample_ratio <= 1 and oversample_ratio >= 1")
        if target_sampling not in TARGET_SAMPLING:
            raise ValueError(
                f"target_sampling must be one of {TARGET_SAMPLING}, got {target_sampling!r}"
            )
        self.target_sampling = target_sampling
        self.num_classes = num_classes
        self.class_weight = class_weight
        self.mask_weight = mask_weight
        self.dice_weight = dice_weight
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        weights = torch.ones(num_classes + 1)
        weights[-1] = no_object_weight
        self.register_buffer("class_weights", weights, persistent=False)

    def forward(
        self,
        class_logits: Sequence[Tensor],
        mask_logits: Sequence[Tensor],
        targets: MaskTargets,
    ) -> dict[str, Tensor]:
        num_masks = _mean_mask_count(targets, class_logits[0].device)
        losses: dict[str, list[Tensor]] = {"loss_cls": [], "loss_mask": [], "loss_dice": []}
        for classes, masks in zip(class_logits, mask_logits, strict=True):
            matches = self.match(classes, masks, targets)
            loss_mask, loss_dice = self._mask_losses(masks, targets, matches, num_masks)
            losses["loss_cls"].append(
                self.class_weight * self._class_loss(classes, targets, matches)
            )
            losses["loss_mask"].append(self.mask_weight * loss_mask)
            losses["loss_dice"].append(self.dice_weight * loss_dice)
        return {name: torch.stack(values).sum() for name, values in losses.items()}

    @torch.no_grad()
    def match(self, class_logits: Tensor, mask_logits: Tensor, targets: MaskTargets) -> Matches:
        """Minimum-cost one-to-one assignment of queries to target masks, per image.

        Cost = class_weight · (−p(class)) + mask_weight · BCE + dice_weight · dice, the mask terms
        on ``num_points`` uniformly random points shared by all pairs of the image.
        """
        matches: Matches = []
        for b, (labels, masks) in enumerate(zip(targets.labels, targets.masks, strict=True)):
            if len(labels) == 0:
                empty = torch.empty(0, dtype=torch.long, device=mask_logits.device)
                matches.append((empty, empty))
                continue
            points = torch.rand(1, self.num_points, 2, device=mask_logits.device)
            logits = point_sample(mask_logits[b : b + 1].float(), points)[0]
            target = point_sample(masks[None], points, mode=self.target_sampling)[0]
            weights = point_sample(targets.weights[b : b + 1], points, mode="nearest")
            weight = weights[0, 0]
            positive = F.softplus(-logits) * weight
            negative = F.softplus(logits) * weight
            cost_mask = (positive @ target.T + negative @ (1 - target).T) / weight.sum().clamp_min(
                1
            )
            probs = logits.sigmoid() * weight
            cost_dice = 1 - (2 * probs @ target.T + 1) / (
                probs.sum(-1)[:, None] + target.sum(-1)[None, :] + 1
            )
            cost_class = -class_logits[b].float().softmax(-1)[:, labels]
            cost = (
                self.class_weight * cost_class
                + self.mask_weight * cost_mask
                + self.dice_weight * cost_dice
            )
            # Non-finite costs (diverged predictions) would make scipy fail: match them last.
            big = torch.finfo(cost.dtype).max
            cost = torch.nan_to_num(cost, nan=big, posinf=big, neginf=big)
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
            matches.append(
                (
                    torch.as_tensor(rows, dtype=torch.long, device=mask_logits.device),
                    torch.as_tensor(cols, dtype=torch.long, device=mask_logits.device),
                )
            )
        return matches

    def _class_loss(self, class_logits: Tensor, targets: MaskTargets, matches: Matches) -> Tensor:
        """Cross-entropy of every query: its matched class, or no-object (weight 0.1)."""
        target = torch.full(
            class_logits.shape[:2], self.num_classes, dtype=torch.long, device=class_logits.device
        )
        for b, (queries, indices) in enumerate(matches):
            target[b, queries] = targets.labels[b][indices]
        return F.cross_entropy(class_logits.transpose(1, 2), target, weight=self.class_weights)

    def _mask_losses(
        self, mask_logits: Tensor, targets: MaskTargets, matches: Matches, num_masks: float
    ) -> tuple[Tensor, Tensor]:
        """Point-sampled BCE and dice of the matched masks, each summed and divided by num_masks."""
        images = torch.cat([torch.full_like(queries, b) for b, (queries, _) in enumerate(matches)])
        if images.numel() == 0:
            zero = mask_logits.sum() * 0.0  # keeps every mask parameter in the graph
            return zero, zero
        queries = torch.cat([queries for queries, _ in matches])
        pred = mask_logits[images, queries][:, None]
        target = torch.cat(
            [masks[indices] for masks, (_, indices) in zip(targets.masks, matches, strict=True)]
        )[:, None]
        weight_maps = targets.weights[images]
        with torch.no_grad():
            points = self._importance_points(pred, weight_maps)
            labels = point_sample(target, points, mode=self.target_sampling)[:, 0]
            weights = point_sample(weight_maps, points, mode="nearest")[:, 0]
        logits = point_sample(pred, points)[:, 0]
        bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        loss_mask = ((bce * weights).sum(-1) / weights.sum(-1).clamp_min(1)).sum() / num_masks
        probs = logits.sigmoid() * weights
        dice = 1 - (2 * (probs * labels).sum(-1) + 1) / (probs.sum(-1) + labels.sum(-1) + 1)
        return loss_mask, dice.sum() / num_masks

    def _importance_points(self, pred: Tensor, weight_maps: Tensor) -> Tensor:
        """``num_points`` points per mask: the most uncertain (|logit| smallest) of
        ``oversample_ratio · num_points`` random candidates on counted pixels, then random ones."""
        count = pred.shape[0]
        candidates = torch.rand(
            count, int(self.num_points * self.oversample_ratio), 2, device=pred.device
        )
        uncertainty = -point_sample(pred.float(), candidates)[:, 0].abs()
        counted = point_sample(weight_maps, candidates, mode="nearest")[:, 0] > 0
        uncertainty = uncertainty.masked_fill(~counted, float("-inf"))
        num_uncertain = int(self.importance_sample_ratio * self.num_points)
        chosen = uncertainty.topk(num_uncertain, dim=1).indices
        uncertain = candidates.gather(1, chosen[..., None].expand(-1, -1, 2))
        random = torch.rand(count, self.num_points - num_uncertain, 2, device=pred.device)
        return torch.cat([uncertain, random], dim=1)
