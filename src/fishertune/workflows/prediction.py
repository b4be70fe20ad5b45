"""Prediction with a trained segmentor (``fishertune predict``).

:func:`predict_images` segments image files (or every image of a folder) with a checkpoint,
each as the protocol tests it (resized to its test size, the scores resized back) or at its
native size, and writes its train ids, its Cityscapes label ids (the benchmark servers'
format), the colourised mask and an overlay; :func:`predict_ids` is the prediction of one
image, also used for the run report's qualitative grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image
from torch import Tensor

from fishertune.data.base import DatasetError, read_rgb
from fishertune.data.labels import train_id_to_label_id
from fishertune.engine.distributed import resolve_device
from fishertune.engine.precision import autocast
from fishertune.engine.tuned_model import load_trained
from fishertune.evaluation.domains import protocol_scores
from fishertune.evaluation.protocols import EvalProtocol
from fishertune.label_space import CITYSCAPES_CLASSES, IGNORE_INDEX, NUM_CLASSES
from fishertune.models import Segmentor
from fishertune.progress import track
from fishertune.reporting.palette import colorize, overlay

__all__ = ["IMAGE_SUFFIXES", "Prediction", "image_files", "predict_ids", "predict_images"]


@dataclass(frozen=True)
class Prediction:
    """The files written for one input image and what the model saw in it.

    Attributes:
        source: the input image.
        mask: ``<stem>_mask.png``, the colourised train ids (Cityscapes palette).
        overlay: ``<stem>_overlay.png``, the mask blended over the image.
        ids: ``<stem>_ids.png``, the train ids as a single-channel uint8 PNG.
        label_ids: ``<stem>_labelIds.png``, the Cityscapes label ids (19-class models), the
            format the Cityscapes and ACDC benchmark servers take; None otherwise.
        size: ``(H, W)`` of the image (and of the three outputs).
        class_share: fraction of the pixels predicted as each class, for the classes present,
            largest first.
    """

    source: Path
    mask: Path
    overlay: Path
    ids: Path
    label_ids: Path | None
    size: tuple[int, int]
    class_share: dict[str, float]


@torch.no_grad()
def predict_ids(
    segmentor: Segmentor,
    image: Tensor,
    protocol: EvalProtocol,
    *,
    amp: str = "auto",
    test_as: str | None = None,
) -> NDArray[np.uint8]:
    """Train ids ``(H, W)`` predicted for one normalised image ``(3, H, W)``, in the
    protocol's mode (whole image or sliding windows) and the run's precision, on the
    segmentor's device, in eval mode (restored afterwards). ``test_as``: a data set name whose
    test size the protocol resizes the image to (the scores are resized back, as in
    evaluation, :func:`~fishertune.evaluation.domains.protocol_scores`); "" for the protocol's
    default size; None predicts at the image's own size."""
    device = next(segmentor.parameters()).device
    was_training = segmentor.training
    segmentor.eval()
    size = (int(image.shape[-2]), int(image.shape[-1]))
    try:
        with autocast(device, amp):
            batch = image[None].to(device)
            if test_as is None:
                scores = segmentor.predict(
                    batch, mode=protocol.mode, crop_size=protocol.crop, stride=protocol.stride
                )
            else:
                scores = protocol_scores(segmentor, batch, protocol, test_as, size)
    finally:
        segmentor.train(was_training)
    ids: NDArray[np.uint8] = scores[0].argmax(0).to(torch.uint8).cpu().numpy()
    return ids


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


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
"""The files of a folder that ``predict`` segments."""


def image_files(inputs: Sequence[str | Path]) -> list[Path]:
    """The inputs with every folder replaced by its image files (sorted by name, not
    recursive); a folder without any is refused in one line."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(
                p for p in item.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not found:
                raise DatasetError(f"{item}: a folder without images ({', '.join(IMAGE_SUFFIXES)})")
            files += found
        else:
            files.append(item)
    return files


def predict_images(
    checkpoint: str | Path,
    images: Sequence[str | Path],
    out_dir: str | Path,
    *,
    alpha: float = 0.5,
    mode: str | None = None,
    test_as: str | None = "",
    device: str | None = None,
    progress: bool = True,
) -> list[Prediction]:
    """Segment image files (folders: their images) with a checkpoint and write the outputs of
    each into ``out_dir``.

    Every input is read first: if any is missing or unreadable, a
    :class:`~fishertune.data.base.DatasetError` names each such file and nothing is loaded or
    written. Each image is turned upright by its EXIF orientation, normalised as in evaluation
    (:meth:`~fishertune.engine.tuned_model.TrainedModel.evaluation_transform`) and predicted as
    the run's protocol tests it (``test_as``: the data set whose test size applies, "" the
    protocol's default size; the scores are resized back to the image's size) or, with
    ``test_as=None``, at its native size, in the run's inference mode or ``mode``. The argmax
    train ids go to ``<stem>_ids.png`` (single-channel uint8), for a 19-class model their
    Cityscapes label ids to ``<stem>_labelIds.png``, their colours to ``<stem>_mask.png`` and
    their blend over the image (``alpha``, see :func:`~fishertune.reporting.palette.overlay`)
    to ``<stem>_overlay.png``. Inputs sharing a stem get ``-2``, ``-3``, … suffixes in the order
    given, so no output overwrites another of the same call (files of earlier calls are
    overwritten). ``out_dir`` is created when needed; no input returns an empty list.
    """
    paths = image_files(images)
    if not paths:
        return []
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    _check_readable(paths)
    target = resolve_device(device)
    model = load_trained(checkpoint, device=target)
    config = model.config
    inference = model.protocol(mode=mode)
    transform = model.evaluation_transform()
    class_names = CITYSCAPES_CLASSES[: config.model.num_classes]
    label_ids = train_id_to_label_id() if config.model.num_classes == NUM_CLASSES else None
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    predictions: list[Prediction] = []
    pairs = list(zip(paths, _output_stems(paths), strict=True))
    for path, stem in track(pairs, "predict", enabled=progress):
        rgb = read_rgb(path, upright=True)
        height, width = rgb.shape[:2]
        unlabelled = torch.full((height, width), IGNORE_INDEX, dtype=torch.int64)
        image, _ = transform(torch.from_numpy(rgb).permute(2, 0, 1), unlabelled)
        ids = predict_ids(
            model.segmentor, image, inference, amp=config.schedule.amp, test_as=test_as
        )
        prediction = Prediction(
            source=path,
            mask=folder / f"{stem}_mask.png",
            overlay=folder / f"{stem}_overlay.png",
            ids=folder / f"{stem}_ids.png",
            label_ids=None if label_ids is None else folder / f"{stem}_labelIds.png",
            size=(height, width),
            class_share=_class_share(ids, class_names),
        )
        Image.fromarray(ids).save(prediction.ids)
        if label_ids is not None and prediction.label_ids is not None:
            Image.fromarray(label_ids[ids]).save(prediction.label_ids)
        Image.fromarray(colorize(ids)).save(prediction.mask)
        Image.fromarray(overlay(rgb, ids, alpha)).save(prediction.overlay)
        predictions.append(prediction)
    return predictions
