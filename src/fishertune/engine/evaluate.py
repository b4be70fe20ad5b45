"""One evaluation path for a segmentor on named datasets, for training and for checkpoints.

:func:`evaluate_segmentor` builds each dataset's in-order loader (this rank's shard under
torch.distributed), runs the images under the run's mixed precision and evaluates with
:func:`~fishertune.evaluation.domains.evaluate_domains` over the label space's class names;
the trainer's periodic evaluation and ``fishertune evaluate`` both go through it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor
from torch.utils.data import Dataset

from fishertune.data.base import Transform
from fishertune.engine.data import eval_loader
from fishertune.engine.precision import autocast
from fishertune.evaluation.domains import DomainResults, Predictor, evaluate_domains
from fishertune.evaluation.protocols import EvalProtocol
from fishertune.label_space import CITYSCAPES_CLASSES

__all__ = ["evaluate_segmentor"]


def evaluate_segmentor(
    segmentor: Predictor,
    datasets: Mapping[str, Dataset[tuple[Tensor, Tensor]]],
    transform: Transform,
    protocol: EvalProtocol,
    *,
    num_classes: int,
    device: torch.device,
    amp: str,
    batch_size: int,
    workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = False,
    method: str = "model",
) -> DomainResults:
    """mIoU and per-class IoU of ``segmentor`` on every dataset (``transform`` maps each
    untransformed item to the model's input), under ``protocol`` and the ``amp`` setting of
    ``schedule.amp``; results labelled ``method``."""
    loaders = {
        name: eval_loader(
            dataset,
            transform,
            batch_size=batch_size,
            workers=workers,
            rank=rank,
            world_size=world_size,
        )
        for name, dataset in datasets.items()
    }
    with autocast(device, amp):
        return evaluate_domains(
            segmentor,
            loaders,
            protocol=protocol,
            class_names=CITYSCAPES_CLASSES[:num_classes],
            device=device,
            progress=progress,
            method=method,
        )
