"""Confusion-matrix segmentation metric (IoU per class, mIoU, pixel accuracy)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from fishertune.label_space import IGNORE_INDEX


class SegmentationMetric:
    """Accumulates a ``(K, K)`` int64 confusion matrix and reports IoU, mIoU and accuracy.

    Rows of the matrix are target classes, columns predicted classes. Pixels whose target is
    ``ignore_index`` are skipped; any other target or predicted class outside ``[0, K)`` is an
    error. The matrix lives on ``device`` (default CPU) and follows the inputs: it is moved to
    the device of the first :meth:`update` that uses another one, so a CUDA model needs no
    transfer per batch.

    Distributed use: every rank calls :meth:`update` on its own shard; :meth:`compute` sums the
    matrices of all ranks (one ``all_reduce``) when ``torch.distributed`` is initialised, so
    every rank must call it. With NCCL the matrix must be on the rank's GPU (pass ``device``
    when a rank may see no batch). Updates never communicate.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = IGNORE_INDEX,
        device: torch.device | str | None = None,
    ) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self._confusion = torch.zeros(
            num_classes, num_classes, dtype=torch.int64, device=device or "cpu"
        )

    @property
    def confusion_matrix(self) -> Tensor:
        """This process's confusion matrix (rows: target, columns: prediction); not reduced."""
        return self._confusion

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self._confusion.zero_()

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch: ``pred`` class indices ``(B, H, W)`` or scores ``(B, K, H, W)``.

        Scores (logits or probabilities) are reduced with ``argmax`` over dim 1. ``target`` is
        ``(B, H, W)`` integer labels with ``ignore_index`` for unlabelled pixels.
        """
        if pred.dim() == target.dim() + 1:
            if pred.shape[1] != self.num_classes:
                raise ValueError(
                    f"scores have {pred.shape[1]} classes, the metric {self.num_classes}"
                )
            pred = pred.argmax(dim=1)
        if pred.shape != target.shape:
            raise ValueError(
                f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} do not match"
            )
        if pred.is_floating_point() or target.is_floating_point():
            raise TypeError("class indices must be integer tensors (pass scores as (B, K, H, W))")
        if self._confusion.device != pred.device:
            self._confusion = self._confusion.to(pred.device)
        target = target.to(pred.device)
        keep = target != self.ignore_index
        truth = target[keep].long()
        guess = pred[keep].long()
        k = self.num_classes
        for name, values in (("target", truth), ("prediction", guess)):
            if values.numel() and (values.min() < 0 or values.max() >= k):
                raise ValueError(f"{name} has classes outside [0, {k}) other than ignore_index")
        counts = torch.bincount(truth * k + guess, minlength=k * k)
        self._confusion += counts.view(k, k)

    def compute(self) -> dict[str, Tensor]:
        """Metrics over everything seen (all ranks), as float64 CPU tensors.

        ``iou``: ``(K,)`` intersection over union per class, NaN for a class absent from both
        prediction and target; ``miou``: mean of the non-NaN IoUs (mmseg's ``nanmean``), NaN if
        there are none; ``acc``: ``(K,)`` per-class accuracy (recall), NaN for a class absent
        from the target; ``macc``: its nanmean; ``pixel_acc``: correct / labelled pixels.
        """
        confusion = self._confusion.clone()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(confusion, op=dist.ReduceOp.SUM)
        confusion = confusion.cpu().double()
        hits = confusion.diagonal()
        per_target = confusion.sum(dim=1)
        union = per_target + confusion.sum(dim=0) - hits
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        iou = torch.where(union > 0, hits / union.clamp(min=1), nan)
        acc = torch.where(per_target > 0, hits / per_target.clamp(min=1), nan)
        total = confusion.sum()
        return {
            "iou": iou,
            "miou": iou.nanmean(),
            "acc": acc,
            "macc": acc.nanmean(),
            "pixel_acc": hits.sum() / total if total > 0 else nan,
        }
