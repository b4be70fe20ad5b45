"""Evaluation and prediction from a trained checkpoint (``fishertune evaluate`` / ``predict``).

:func:`evaluate_checkpoint` re-runs the trainer's evaluation on a checkpoint: the same
datasets (or others named on the command line), the same loader, protocol, class names and
precision, so that with the defaults it reproduces the run's ``results.json`` for the same
weights. :func:`predict_images` segments image files at their native resolution and writes the
colourised mask, an overlay and the raw train ids of each.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from fishertune.data.base import DatasetError, read_rgb
from fishertune.data.registry import DATASETS
from fishertune.data.synthetic import STYLES
from fishertune.engine.config import SYNTHETIC, RunConfig
from fishertune.engine.data import (
    SOURCE_DOMAIN,
    eval_protocol,
    evaluation_transform,
    source_val_set,
    target_datasets,
)
from fishertune.engine.distributed import resolve_device
from fishertune.engine.evaluate import evaluate_segmentor
from fishertune.engine.model import TrainedModel, load_trained
from fishertune.engine.precision import autocast
from fishertune.evaluation.domains import DomainResults
from fishertune.evaluation.protocols import EvalProtocol
from fishertune.label_space import CITYSCAPES_CLASSES, IGNORE_INDEX
from fishertune.models import Backbone, Segmentor
from fishertune.progress import track
from fishertune.reporting.palette import colorize, overlay

__all__ = ["Prediction", "evaluate_checkpoint", "predict_images"]

EvalSet = Dataset[tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class Prediction:
    """The files written for one input image and what the model saw in it.

    Attributes:
        source: the input image.
        mask: ``<stem>_mask.png``, the colourised train ids (Cityscapes palette).
        overlay: ``<stem>_overlay.png``, the mask blended over the image.
        ids: ``<stem>_ids.png``, the train ids as a single-channel uint8 PNG.
        size: ``(H, W)`` of the image (and of the three outputs).
        class_share: fraction of the pixels predicted as each class, for the classes present,
            largest first.
    """

    source: Path
    mask: Path
    overlay: Path
    ids: Path
    size: tuple[int, int]
    class_share: dict[str, float]


@torch.no_grad()
def predict_ids(
    segmentor: Segmentor, image: Tensor, protocol: EvalProtocol, *, amp: str = "auto"
) -> NDArray[np.uint8]:
    """Train ids ``(H, W)`` predicted for one normalised image ``(3, H, W)`` at its own size,
    in the protocol's mode (whole image or sliding windows) and the run's precision, on the
    segmentor's device, in eval mode (restored afterwards)."""
    device = next(segmentor.parameters()).device
    was_training = segmentor.training
    segmentor.eval()
    try:
        with autocast(device, amp):
            scores = segmentor.predict(
                image[None].to(device),
                mode=protocol.mode,
                crop_size=protocol.crop,
                stride=protocol.stride,
            )
    finally:
        segmentor.train(was_training)
    ids: NDArray[np.uint8] = scores[0].argmax(0).to(torch.uint8).cpu().numpy()
    return ids


def _protocol(config: RunConfig, protocol: str | None, mode: str | None) -> EvalProtocol:
    """The run's protocol, or the registered ``protocol``, in the run's mode or ``mode``.

    Built by :func:`~fishertune.engine.data.eval_protocol`, so a synthetic run keeps its image
    size as the default test size whichever protocol is named.
    """
    if protocol is not None:
        evaluation = dataclasses.replace(config.evaluation, protocol=protocol)
        config = dataclasses.replace(config, evaluation=evaluation)
    chosen = eval_protocol(config)
    return chosen if mode is None else chosen.with_mode(mode)


def _mean_std(model: TrainedModel) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The normalisation statistics of the model's backbone."""
    backbone = model.segmentor.backbone
    if not isinstance(backbone, Backbone):
        raise TypeError(f"{model.path}: the segmentor's backbone is not a ViTBackbone")
    return backbone.mean, backbone.std


def _dataset_domain(config: RunConfig, entry: str) -> tuple[str, EvalSet]:
    """The evaluation split of the registered dataset of ``entry = "NAME=ROOT"``."""
    name, _, root = entry.partition("=")
    if name not in DATASETS or not root:
        raise ValueError(
            f"data entry {entry!r}: expected NAME=ROOT with NAME one of {sorted(DATASETS)} "
            "and ROOT its directory"
        )
    # The run's targets rebuilt as this one dataset, so data.eval_images limits it alike.
    data = dataclasses.replace(config.data, source=name, targets=[name], roots={name: root})
    return name, target_datasets(dataclasses.replace(config, data=data))[name]


def _style_domain(config: RunConfig, entry: str) -> EvalSet:
    """The validation set of the embedded benchmark's style ``entry`` at the run's settings."""
    if entry == SOURCE_DOMAIN:
        source_val = source_val_set(config)
        assert source_val is not None  # the synthetic source always has a validation split
        return source_val
    data = dataclasses.replace(config.data, targets=[entry])
    return target_datasets(dataclasses.replace(config, data=data))[entry]


def _domains(config: RunConfig, data: Sequence[str]) -> dict[str, EvalSet]:
    """The evaluation sets: the run's (``data`` empty) or those ``data`` names, in order."""
    if not data:
        domains: dict[str, EvalSet] = {}
        source_val = source_val_set(config)
        if source_val is not None:
            domains[SOURCE_DOMAIN] = source_val
        domains.update(target_datasets(config))
        return domains
    synthetic = config.data.source == SYNTHETIC
    domains = {}
    for entry in data:
        if "=" in entry:
            name, dataset = _dataset_domain(config, entry)
        elif synthetic and entry in STYLES:
            name, dataset = entry, _style_domain(config, entry)
        else:
            styles = f"a style of the synthetic benchmark {STYLES} or " if synthetic else ""
            raise ValueError(
                f"data entry {entry!r}: expected {styles}NAME=ROOT with NAME one of "
                f"{sorted(DATASETS)}"
            )
        if name in domains:
            raise ValueError(f"data entry {entry!r}: domain {name!r} is given twice")
        domains[name] = dataset
    return domains


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    data: Sequence[str] = (),
    protocol: str | None = None,
    mode: str | None = None,
    eval_images: int | None = None,
    batch_size: int = 2,
    workers: int = 0,
    device: str | None = None,
    progress: bool = True,
) -> DomainResults:
    """Evaluate a checkpoint (see :func:`~fishertune.engine.model.resolve_checkpoint`) as its
    run's trainer does.

    Args:
        checkpoint: a checkpoint's JSON file, its path without suffix, or a run directory
            (its ``best`` checkpoint, else ``last``). EMA weights are used when the run kept them.
        data: the domains, in order. Empty: those the run was evaluated on (the source's
            validation set when it has one, then ``data.targets``). Otherwise each entry is
            ``NAME=ROOT`` (a registered dataset, evaluated on its evaluation split) or, for a
            run on the synthetic benchmark, a style name (``source`` for the source style's
            validation scenes, or a target style). A malformed or unknown entry, or a domain
            named twice, raises ValueError naming it and what is allowed.
        protocol: a registered protocol name instead of the run's ``evaluation.protocol``.
        mode: ``"slide"`` or ``"whole"`` instead of the run's ``evaluation.mode``.
        eval_images: evaluate the first this many images of each domain instead of the run's
            ``data.eval_images`` (for synthetic styles: the number of scenes generated).
        batch_size: images per batch.
        workers: data-loader worker processes.
        device: ``"cpu"``, ``"cuda"``, … (default: CUDA when available). On CUDA the images
            run under bf16 autocast unless the run's ``schedule.amp`` is ``"off"``, as in
            training.
        progress: show a progress bar per domain.

    Returns:
        The per-domain metrics, labelled with the run's method name.
    """
    if eval_images is not None and eval_images < 1:
        raise ValueError(f"eval_images must be at least 1, got {eval_images}")
    target = resolve_device(device)
    model = load_trained(checkpoint, device=target)
    config = model.config
    if eval_images is not None:
        data_config = dataclasses.replace(config.data, eval_images=eval_images)
        config = dataclasses.replace(config, data=data_config)
    return evaluate_segmentor(
        model.segmentor,
        _domains(config, data),
        evaluation_transform(*_mean_std(model)),
        _protocol(config, protocol, mode),
        num_classes=config.model.num_classes,
        device=target,
        amp=config.schedule.amp,
        batch_size=batch_size,
        workers=workers,
        progress=progress,
        method=config.method.name,
    )


def _check_readable(paths: Sequence[Path]) -> None:
    """Raise :class:`DatasetError` naming every file of ``paths`` that cannot be read."""
    problems: list[str] = []
    for path in paths:
        try:
            read_rgb(path)
        except DatasetError as error:
            problems.append(str(error))
    if problems:
        raise DatasetError("; ".join(problems))


def _output_stems(paths: Sequence[Path]) -> list[str]:
    """Each file's stem, made unique (case-insensitively) by ``-2``, ``-3``, … suffixes in the
    order given: ``a/x.png``, ``b/x.jpg`` → ``x``, ``x-2``."""
    used: set[str] = set()
    stems: list[str] = []
    for path in paths:
        stem, count = path.stem, 1
        while stem.casefold() in used:
            count += 1
            stem = f"{path.stem}-{count}"
        used.add(stem.casefold())
        stems.append(stem)
    return stems


def _class_share(ids: NDArray[np.uint8], class_names: Sequence[str]) -> dict[str, float]:
    """Pixel fraction of each class present in ``ids``, largest first."""
    counts = np.bincount(ids.ravel(), minlength=len(class_names))
    shares = {name: int(counts[i]) / ids.size for i, name in enumerate(class_names) if counts[i]}
    return dict(sorted(shares.items(), key=lambda item: -item[1]))


def predict_images(
    checkpoint: str | Path,
    images: Sequence[str | Path],
    out_dir: str | Path,
    *,
    alpha: float = 0.5,
    mode: str | None = None,
    device: str | None = None,
    progress: bool = True,
) -> list[Prediction]:
    """Segment image files with a checkpoint and write three PNGs per image into ``out_dir``.

    Every input is read first: if any is missing or unreadable, a
    :class:`~fishertune.data.base.DatasetError` names each such file and nothing is loaded or
    written. Each image is normalised as in evaluation
    (:func:`~fishertune.engine.data.evaluation_transform`) and predicted at its native
    resolution (no resizing to the protocol's test size) in the run's inference mode, or
    ``mode``: the whole image at once, or the protocol's sliding windows. The argmax train ids
    go to ``<stem>_ids.png`` (single-channel uint8), their colours to ``<stem>_mask.png`` and
    their blend over the image (``alpha``, see :func:`~fishertune.reporting.palette.overlay`)
    to ``<stem>_overlay.png``. Inputs sharing a stem get ``-2``, ``-3``, … suffixes in the
    order given, so no output overwrites another of the same call (files of earlier calls are
    overwritten). ``out_dir`` is created when needed; no input returns an empty list.
    """
    paths = [Path(image) for image in images]
    if not paths:
        return []
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    _check_readable(paths)
    target = resolve_device(device)
    model = load_trained(checkpoint, device=target)
    config = model.config
    inference = _protocol(config, None, mode)
    transform = evaluation_transform(*_mean_std(model))
    class_names = CITYSCAPES_CLASSES[: config.model.num_classes]
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    predictions: list[Prediction] = []
    pairs = list(zip(paths, _output_stems(paths), strict=True))
    for path, stem in track(pairs, "predict", enabled=progress):
        rgb = read_rgb(path)
        height, width = rgb.shape[:2]
        unlabelled = torch.full((height, width), IGNORE_INDEX, dtype=torch.int64)
        image, _ = transform(torch.from_numpy(rgb).permute(2, 0, 1), unlabelled)
        ids = predict_ids(model.segmentor, image, inference, amp=config.schedule.amp)
        prediction = Prediction(
            source=path,
            mask=folder / f"{stem}_mask.png",
            overlay=folder / f"{stem}_overlay.png",
            ids=folder / f"{stem}_ids.png",
            size=(height, width),
            class_share=_class_share(ids, class_names),
        )
        Image.fromarray(ids).save(prediction.ids)
        Image.fromarray(colorize(ids)).save(prediction.mask)
        Image.fromarray(overlay(rgb, ids, alpha)).save(prediction.overlay)
        predictions.append(prediction)
    return predictions
