"""One evaluation path for a segmentor on named datasets, for training and for checkpoints.

:func:`evaluate_segmentor` builds each dataset's in-order loader (this rank's shard under
torch.distributed), runs the images under the run's mixed precision and evaluates with
:func:`~fishertune.evaluation.domains.evaluate_domains` over the label space's class names;
the trainer's periodic evaluation and ``fishertune evaluate`` both go through it, under the
protocol :func:`eval_protocol` gives.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch

from fishertune.data.base import LabelledImages, Transform
from fishertune.data.registry import FILE_DATASETS
from fishertune.data.synthetic import SyntheticSettings
from fishertune.engine.batches import eval_loader
from fishertune.engine.precision import autocast
from fishertune.evaluation.domains import DomainResults, Predictor, evaluate_domains
from fishertune.evaluation.protocols import EvalProtocol, get_protocol
from fishertune.label_space import CITYSCAPES_CLASSES

__all__ = ["eval_protocol", "evaluate_segmentor"]


def eval_protocol(
    name: str, mode: str, *, source: str, synthetic: SyntheticSettings
) -> EvalProtocol:
    """The registered protocol ``name`` in ``mode`` for a run trained on the data set
    ``source``. When the source is generated (the embedded benchmark, at the ``synthetic``
    settings), its image size replaces the protocol's default size, which every domain without
    a declared size of its own (the benchmark's styles) is tested at."""
    protocol = get_protocol(name).with_mode(mode)
    if source in FILE_DATASETS:
        return protocol
    return dataclasses.replace(protocol, default_size=synthetic.test_size)


def evaluate_segmentor(
    segmentor: Predictor,
    datasets: Mapping[str, LabelledImages],
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
