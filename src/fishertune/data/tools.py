"""Dataset maintenance behind ``fishertune data``: validating a tree and converting its labels.

:func:`check_dataset` reads every sample of every split present under a root through the
dataset's own loader with ``check=True`` and collects every problem instead of stopping at the
first: images without a label file, unreadable files, image/label size mismatches and label
values outside the dataset's id table.

:func:`convert_dataset` writes the train-id label PNGs (8-bit grey, values 0–18 and 255) that
the DGSS literature expects next to each native label file, for the data sets that declare a
:class:`~fishertune.data.labels.LabelConversion`::

    gtav       labels/{name}_labelTrainIds.png
    mapillary  {split}/labels/{key}_labelTrainIds.png
    synthia    GT/LABELS/{name}_labelTrainIds.png

Conversion runs in a process pool, is resumable (a complete output is skipped) and never leaves
a partial file under a final name: every output is written to a hidden temporary file in the
same directory and moved into place with :func:`os.replace`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from fishertune.data.base import (
    DatasetError,
    SegmentationDataset,
    TreeDataset,
    auditing_pairs,
    check_root,
)
from fishertune.data.labels import LabelMap, LabelValueError
from fishertune.data.registry import DATASETS, build_dataset, file_dataset_class
from fishertune.progress import track

__all__ = [
    "CONVERTIBLE",
    "TRAIN_ID_SUFFIX",
    "CheckReport",
    "ConvertJob",
    "ConvertReport",
    "UsageError",
    "check_dataset",
    "convert_dataset",
    "convert_jobs",
    "default_workers",
]

TRAIN_ID_SUFFIX = "_labelTrainIds.png"
"""File name ending of a converted train-id label."""

CONVERTIBLE: tuple[str, ...] = tuple(
    name for name, cls in DATASETS.items() if cls.label_conversion is not None
)
"""Datasets whose native label ids :func:`convert_dataset` can turn into train-id PNGs."""

PROGRESS_MIN_ITEMS = 50
"""Trees with at least this many samples get a progress bar on stderr."""

Outcome = Literal["written", "skipped", "failed"]
"""What happened to one label file during a conversion."""


class UsageError(ValueError):
    """A user mistake on the command line: unknown dataset, missing root, unsupported request."""


def default_workers() -> int:
    """The default pool size: ``min(4, cpu count)``."""
    return min(4, os.cpu_count() or 1)


def _dataset_class(name: str) -> type[TreeDataset]:
    """:func:`~fishertune.data.registry.file_dataset_class`, its error a :class:`UsageError`."""
    try:
        return file_dataset_class(name)
    except ValueError as error:
        raise UsageError(str(error)) from None


def _root(root: str | os.PathLike[str]) -> Path:
    """``root`` as a Path; :class:`UsageError` when it is not an existing directory."""
    path = Path(root).expanduser()
    try:
        check_root(path)
    except FileNotFoundError as error:
        raise UsageError(str(error)) from None
    return path


@dataclass
class CheckReport:
    """What :func:`check_dataset` found: images per split present, and every problem."""

    name: str
    root: Path
    counts: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def check_dataset(
    name: str,
    root: str | os.PathLike[str],
    split: str | None = None,
    *,
    progress: bool | None = None,
) -> CheckReport:
    """Validate the tree of dataset ``name`` at ``root``: ``split``, or every split present.

    A split counts as present when its image pattern matches at least one file (or when its
    loader fails for another reason, which is reported). Every sample is read with
    ``check=True``. ``progress`` shows a bar on stderr (default: for trees of at least
    :data:`PROGRESS_MIN_ITEMS` samples). Raises :class:`UsageError` for an unknown name or split,
    a missing root, or a root holding none of the requested splits.
    """
    cls = _dataset_class(name)
    base = _root(root)
    try:
        splits = cls.splits if split is None else (cls.resolve_split(split),)
    except ValueError as error:
        raise UsageError(str(error)) from None
    report = CheckReport(name, base)
    datasets: list[SegmentationDataset] = []
    for each in splits:
        with auditing_pairs() as audit:
            try:
                dataset: SegmentationDataset | None = build_dataset(name, base, each, check=True)
            except (OSError, ValueError) as error:
                dataset = None
                if audit.images:  # the split is present but its loader failed
                    report.problems.append(f"{each}: {error}")
        if audit.images:
            report.counts[each] = audit.images
            report.problems.extend(audit.missing)
            if dataset is not None:
                datasets.append(dataset)
    if not report.counts:
        wanted = split or " / ".join(cls.splits)
        raise UsageError(f"no {name} images found under {base} (split {wanted})")
    samples = [(dataset, index) for dataset in datasets for index in range(len(dataset))]
    enabled = len(samples) >= PROGRESS_MIN_ITEMS if progress is None else progress
    for dataset, index in track(samples, f"checking {name}", enabled=enabled):
        try:
            dataset[index]
        except (DatasetError, LabelValueError, OSError) as error:
            report.problems.append(str(error))
    return report


@dataclass(frozen=True)
class ConvertJob:
    """One label file to convert: its native ids, where the train ids go, how to read the ids
    (the data set's ``read_label``) and how to map them."""

    source: Path
    target: Path
    reader: Callable[[Path], NDArray[Any]]
    label_map: LabelMap


@dataclass
class ConvertReport:
    """What :func:`convert_dataset` did: files written, files already complete, failures."""

    written: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)


def _jobs_in(
    folder: Path, reader: Callable[[Path], NDArray[Any]], label_map: LabelMap
) -> list[ConvertJob]:
    """A job for every native label PNG in ``folder`` (converted outputs excluded)."""
    sources = sorted(
        path
        for path in folder.glob("*.png")
        if path.is_file() and not path.name.endswith(TRAIN_ID_SUFFIX)
    )
    return [
        ConvertJob(path, path.with_name(path.stem + TRAIN_ID_SUFFIX), reader, label_map)
        for path in sources
    ]


def convert_jobs(name: str, root: str | os.PathLike[str]) -> list[ConvertJob]:
    """Every label file of dataset ``name`` under ``root`` to convert, in a stable order.

    The data set's :class:`~fishertune.data.labels.LabelConversion` says where the files are and
    which table maps them. Raises :class:`UsageError` for an unknown or unsupported dataset, a
    missing root, a missing or malformed file the table is read from (Mapillary's
    ``config.json``), or a tree without label files.
    """
    cls = _dataset_class(name)
    base = _root(root)
    conversion = cls.label_conversion
    if conversion is None:
        raise UsageError(
            f"converting {name} is not supported; convert supports {', '.join(CONVERTIBLE)}"
        )
    try:
        label_map = conversion.label_map(base)
    except (OSError, ValueError) as error:
        raise UsageError(str(error)) from None
    jobs = [
        job
        for folder in conversion.folders(base)
        for job in _jobs_in(folder, cls.read_label, label_map)
    ]
    if not jobs:
        raise UsageError(f"no {name} label files found under {base}")
    return jobs


def _is_complete(job: ConvertJob) -> bool:
    """Whether ``job.target`` is a fully decodable 8-bit grey PNG of the source's size."""
    if not job.target.is_file():
        return False
    try:
        with Image.open(job.source) as source:
            size = source.size
        with Image.open(job.target) as target:
            target.load()
            return bool(target.format == "PNG" and target.mode == "L" and target.size == size)
    except (OSError, SyntaxError, ValueError):
        return False


def _remove_leftovers(target: Path) -> None:
    """Delete temporary files an interrupted conversion of ``target`` left behind."""
    for leftover in target.parent.glob(f".{target.name}.*.tmp"):
        leftover.unlink(missing_ok=True)


def _convert_one(job: ConvertJob) -> tuple[Outcome, str]:
    """Convert one file unless its output is complete; the outcome and, on failure, why."""
    if _is_complete(job):
        return "skipped", ""
    _remove_leftovers(job.target)
    try:
        train_ids = job.label_map.apply(job.reader(job.source), source=str(job.source))
    except DatasetError as error:
        return "failed", str(error)
    temporary = job.target.with_name(f".{job.target.name}.{os.getpid()}.tmp")
    try:
        Image.fromarray(train_ids.astype(np.uint8)).save(temporary, format="PNG")
        os.replace(temporary, job.target)
    finally:
        temporary.unlink(missing_ok=True)
    return "written", ""


def convert_dataset(
    name: str,
    root: str | os.PathLike[str],
    *,
    workers: int | None = None,
    progress: bool | None = None,
) -> ConvertReport:
    """Write the train-id PNG of every label file of dataset ``name`` (:func:`convert_jobs`).

    ``workers`` processes convert in parallel (default :func:`default_workers`; 1 converts in
    this process). ``progress`` as in :func:`check_dataset`. Source files that cannot be read
    are listed in :attr:`ConvertReport.failed`; every other file is written or skipped.
    """
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")
    jobs = convert_jobs(name, root)
    enabled = len(jobs) >= PROGRESS_MIN_ITEMS if progress is None else progress
    report = ConvertReport()

    def tally(outcomes: Iterator[tuple[Outcome, str]]) -> None:
        for outcome, why in track(outcomes, f"converting {name}", enabled=enabled, total=len(jobs)):
            if outcome == "written":
                report.written += 1
            elif outcome == "skipped":
                report.skipped += 1
            else:
                report.failed.append(why)

    if workers == 1:
        tally(map(_convert_one, jobs))
    else:
        with ProcessPoolExecutor(workers) as pool:
            tally(pool.map(_convert_one, jobs, chunksize=max(1, len(jobs) // (workers * 16))))
    return report
