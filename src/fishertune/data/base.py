"""The shared segmentation Dataset: image/label pairing, file reading and validation.

Every dataset family only finds its (image, label, id table) triples; this module reads them.
An item is ``(image, label)``: ``image`` a ``uint8`` tensor ``(3, H, W)`` (RGB) and ``label`` an
``int64`` tensor ``(H, W)`` of Cityscapes train ids (0–18, 255 = ignore), passed through the
caller's ``transform(image, label)`` when one is given.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import Dataset

from fishertune.data.labels import LabelConversion, LabelMap

__all__ = [
    "DatasetError",
    "EvaluationTreeDataset",
    "LabelCandidate",
    "LabelledImages",
    "Pair",
    "SegmentationDataset",
    "TestSize",
    "Transform",
    "check_root",
    "pair_by_image",
    "per_protocol",
    "read_index_png",
    "read_rgb",
]

Transform = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
"""``transform(image, label) -> (image, label)``, applied to every item."""

LabelCandidate = tuple[Path, Callable[[], LabelMap]]
"""A label file that may exist for an image, and (lazily) the id table its values use."""

LabelledImages = Dataset[tuple[Tensor, Tensor]]
"""Any data set of ``(image, label)`` items: a :class:`SegmentationDataset`, a ``Subset`` of one,
the embedded benchmark, a transformed view."""

TestSize = tuple[int, int] | None
"""A data set's test scale ``(W, H)`` under one protocol; ``None``: the protocol's default size
(the one size every image is tested at under the ``synthetic`` protocol)."""


def per_protocol(**sizes: TestSize) -> Mapping[str, TestSize]:
    """A data set's :attr:`~SegmentationDataset.test_sizes`: protocol name → test size."""
    return MappingProxyType(sizes)


_INDEX_MODES = frozenset({"P", "L", "I", "I;16", "I;16B", "I;16L"})


class DatasetError(ValueError):
    """A dataset file is unreadable, has the wrong format, or does not match its partner."""


@dataclass(frozen=True)
class Pair:
    """One sample: an image file, its label file and the table mapping the label's ids."""

    image: Path
    label: Path
    label_map: LabelMap


def _open(path: Path) -> Image.Image:
    """Open ``path`` with Pillow, raising :class:`DatasetError` that names an unreadable file."""
    try:
        image = Image.open(path)
        image.load()
    except Image.DecompressionBombError as error:
        raise DatasetError(
            f"cannot read image file {path}: it has more pixels than Pillow's limit of "
            f"{2 * (Image.MAX_IMAGE_PIXELS or 0):,} ({error})"
        ) from error
    except (OSError, SyntaxError, ValueError) as error:
        raise DatasetError(f"cannot read image file {path}: {error}") from error
    return image


_WIDE_GREY = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
"""Pillow modes of 16-bit (and 32-bit integer) single-channel images."""


def read_rgb(path: Path, *, upright: bool = False) -> NDArray[np.uint8]:
    """Read an image file as a writable ``(H, W, 3)`` uint8 RGB array.

    A 16-bit grey image is scaled to 8 bits (value / 257, so 65535 → 255) rather than clipped
    at 255, which would turn it white. ``upright`` turns a photo as its EXIF orientation says
    (a camera's portrait shot); data sets' images are read as stored, like their labels.
    """
    with _open(path) as stored:
        image = ImageOps.exif_transpose(stored) if upright else stored
        if image.mode in _WIDE_GREY:
            wide = np.asarray(image, dtype=np.float64)
            grey = np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8)
            return np.repeat(grey[..., None], 3, axis=2)
        return np.array(image.convert("RGB"), dtype=np.uint8)


def read_index_png(path: Path) -> NDArray[Any]:
    """Read a single-channel label image (palette, 8-bit or 16-bit grey) as its raw indices.

    A palette ("P") PNG yields its palette indices, which is how GTAV and Mapillary store ids.
    """
    with _open(path) as image:
        if image.mode not in _INDEX_MODES:
            raise DatasetError(
                f"label file {path} has mode {image.mode!r}; expected a single-channel "
                "(palette or grey) image of ids"
            )
        return np.asarray(image)


@dataclass
class PairingAudit:
    """Images seen and images without a label, collected by :func:`auditing_pairs`."""

    images: int = 0
    missing: list[str] = field(default_factory=list)


_AUDIT: ContextVar[PairingAudit | None] = ContextVar("fishertune_pairing_audit", default=None)


@contextmanager
def auditing_pairs() -> Iterator[PairingAudit]:
    """Within the block, loaders record unlabelled images instead of failing on the first.

    Used by ``fishertune data check`` to list every missing label of a tree in one run.
    """
    audit = PairingAudit()
    token = _AUDIT.set(audit)
    try:
        yield audit
    finally:
        _AUDIT.reset(token)


def pair_by_image(
    root: Path,
    pattern: str,
    candidates: Callable[[Path], Sequence[LabelCandidate]],
) -> list[Pair]:
    """Pair every image under ``root`` matching the glob ``pattern`` with its label file.

    ``candidates(image)`` lists the label files that may belong to ``image``, preferred first;
    the first that exists is used. Raises FileNotFoundError for a missing root, a pattern that
    matches nothing (naming it), or an image none of whose candidates exists (naming both;
    inside :func:`auditing_pairs` such images are recorded and skipped instead).
    """
    check_root(root)
    audit = _AUDIT.get()
    images = sorted(path for path in root.glob(pattern) if path.is_file())
    if audit is not None:
        audit.images += len(images)
    if not images:
        raise FileNotFoundError(f"no images found: nothing matches {root / pattern}")
    pairs = []
    for image in images:
        options = candidates(image)
        found = next(((path, table) for path, table in options if path.is_file()), None)
        if found is None:
            looked = ", ".join(str(path) for path, _ in options)
            problem = f"image {image} has no label file (looked for {looked})"
            if audit is None:
                raise FileNotFoundError(problem)
            audit.missing.append(problem)
            continue
        pairs.append(Pair(image, found[0], found[1]()))
    return pairs


def check_root(root: Path) -> None:
    """Raise FileNotFoundError when the dataset root is not an existing directory."""
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {root} does not exist or is not a directory")


class SegmentationDataset(Dataset[tuple[Tensor, Tensor]]):
    """A list of :class:`Pair` read into ``(uint8 (3, H, W), int64 (H, W) train ids)`` items.

    Subclasses set :attr:`pairs` through ``super().__init__``, may override :meth:`read_label`
    for their label file format, and declare what the rest of the package needs to know about
    them (a registered data set that leaves one out fails ``tests/test_dataset_declarations``):

    * :attr:`splits`: every split, the first being the default;
    * :attr:`train_split`: the split a run trains on (``None``: evaluation only);
    * :attr:`eval_split`: the split a run evaluates on;
    * :attr:`test_sizes`: the test scale under every protocol of
      :data:`fishertune.evaluation.protocols.PROTOCOLS`;
    * :attr:`label_conversion`: how ``fishertune data convert`` writes train-id labels (``None``:
      not needed, the labels are train ids already or are converted on the fly).

    With ``check=True`` a label value outside its dataset's id table raises
    :class:`~fishertune.data.labels.LabelValueError` naming the file instead of becoming 255.
    An image and label of different sizes always raise :class:`DatasetError`.
    """

    splits: ClassVar[tuple[str, ...]]
    train_split: ClassVar[str | None]
    eval_split: ClassVar[str]
    test_sizes: ClassVar[Mapping[str, TestSize]]
    label_conversion: ClassVar[LabelConversion | None]
    domains: ClassVar[tuple[str, ...]] = ()
    """Named domains the data set holds, its training domain first (the embedded benchmark's
    styles); empty for a data set that is one domain."""

    def __init__(
        self, pairs: Sequence[Pair], *, transform: Transform | None = None, check: bool = False
    ) -> None:
        self.pairs = list(pairs)
        self.transform = transform
        self.check = check

    @classmethod
    def has_validation_split(cls) -> bool:
        """Whether it evaluates on a split apart from the one it trains on (GTAV and SYNTHIA,
        one split for both, do not)."""
        return cls.eval_split != cls.train_split

    @classmethod
    def resolve_split(cls, split: str | None) -> str:
        """Return ``split``, or the default split for None; ValueError for an unknown split."""
        if split is None:
            return cls.splits[0]
        if split not in cls.splits:
            raise ValueError(f"{cls.__name__} has no split {split!r}; choose from {cls.splits}")
        return split

    @staticmethod
    def root_path(root: str | os.PathLike[str]) -> Path:
        """The dataset root as a Path, checked to be an existing directory."""
        path = Path(root).expanduser()
        check_root(path)
        return path

    @staticmethod
    def read_label(path: Path) -> NDArray[Any]:
        """Read the raw ids of a label file (single-channel by default)."""
        return read_index_png(path)

    def prepare(self) -> None:
        """Work to do before a run's clocks start (nothing for files read from disk)."""

    def unknown_label_share(self, files: int = 16) -> float:
        """The share of label pixels whose ids are outside the data set's id table, over
        ``files`` label files spread evenly over the data set (their images are not read)."""
        if not self.pairs:
            return 0.0
        picked = sorted(
            {round(i * (len(self.pairs) - 1) / max(files - 1, 1)) for i in range(files)}
        )
        unknown = total = 0
        for index in picked:
            pair = self.pairs[index]
            ids = self.read_label(pair.label)
            unknown += pair.label_map.unknown_count(ids)
            total += ids.size
        return unknown / max(total, 1)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        pair = self.pairs[index]
        rgb = read_rgb(pair.image)
        ids = self.read_label(pair.label)
        if ids.shape != rgb.shape[:2]:
            raise DatasetError(
                f"size mismatch: image {pair.image} is {rgb.shape[1]}x{rgb.shape[0]} but label "
                f"{pair.label} is {ids.shape[1]}x{ids.shape[0]} (width x height)"
            )
        train_ids = pair.label_map.apply(ids, check=self.check, source=str(pair.label))
        # A channels-last view, no copy: torchvision resizes it faster than a CHW copy.
        image = torch.from_numpy(rgb).permute(2, 0, 1)
        label = torch.from_numpy(train_ids)
        if self.transform is not None:
            image, label = self.transform(image, label)
        return image, label


class TreeDataset(SegmentationDataset):
    """A data set read from a directory tree in its official layout.

    Subclasses define :attr:`splits` and :meth:`find_pairs`; the constructor resolves the split
    (``self.split``), checks the root and pairs the files.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str | None = None,
        *,
        transform: Transform | None = None,
        check: bool = False,
    ) -> None:
        self.split = self.resolve_split(split)
        super().__init__(self.find_pairs(self.root_path(root)), transform=transform, check=check)

    def find_pairs(self, base: Path) -> list[Pair]:
        """Every (image, label) pair of ``self.split`` under the root ``base``."""
        raise NotImplementedError


class EvaluationTreeDataset(TreeDataset):
    """A labelled test set read from files (the night and fog targets): never trained on, its
    labels train ids already, tested at 1024×512 under every real-data protocol (Rein's size
    for a data set it names none for). Subclasses declare :attr:`splits` and
    :attr:`eval_split`."""

    train_split = None
    test_sizes = per_protocol(rein=(1024, 512), fullres=(1024, 512), synthetic=None)
    label_conversion = None
