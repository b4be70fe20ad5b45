"""The run's batches: a step-indexed, resumable training stream, in-order evaluation loaders,
and the transforms of both.

Every random choice of the training data is a function of the seed and the position in the
run, never of a generator's history: micro-batch ``m`` of optimisation step ``s`` is the
sample positions ``(s · A + m) · B + j`` (A accumulation steps, B the *global* micro-batch,
``data.batch_size``, j < B) of an endless stream that visits the source set in a fresh
permutation per epoch (epoch ``p // N``, permutation drawn from ``seed + epoch``), and each
sample's augmentation (rescale, crop, flip, photometric) draws from a generator seeded by
``(seed, p)``. Of R processes, rank r takes the r-th of R equal, consecutive shares of every
micro-batch (a batch that does not divide is refused), so R processes see exactly the images
one process would with the same batch, and a resumed run sees exactly the batches an
uninterrupted one would, whatever the number of loader workers. The loader's own generator is
seeded too, so it never draws from torch's global RNG.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from fishertune.data.base import LabelledImages, Transform
from fishertune.data.transforms import Compose, test_transform, train_transform

__all__ = [
    "StepSampler",
    "check_global_batch",
    "eval_loader",
    "evaluation_transform",
    "sample_seed",
    "train_loader",
    "training_transform",
]

_MIX = 0x9E3779B97F4A7C15
_MASK = (1 << 63) - 1


def sample_seed(seed: int, position: int) -> int:
    """The augmentation seed of the sample at stream ``position`` (a 63-bit mix of both)."""
    value = (seed * _MIX + position * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) & _MASK
    value ^= value >> 31
    return (value * _MIX) & _MASK


class _Keyed(Dataset[tuple[Tensor, Tensor]]):
    """Items ``(index, seed)`` → ``transform(dataset[index])`` drawing from ``seed``."""

    def __init__(self, dataset: LabelledImages, transform: Compose) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, Tensor]:
        index, seed = key
        image, label = self.dataset[index]
        return self.transform(image, label, torch.Generator().manual_seed(seed))


def check_global_batch(batch_size: int, world_size: int) -> None:
    """``data.batch_size`` is the global micro-batch: it must split evenly over the processes."""
    if batch_size < 1 or batch_size % world_size:
        raise ValueError(
            f"data.batch_size: {batch_size} images per micro-batch do not split evenly over "
            f"{world_size} processes; give a multiple of {world_size} (it is the global batch)"
        )


class StepSampler(Sampler[list[tuple[int, int]]]):
    """Micro-batches of ``(index, augmentation seed)`` keys for steps ``start … stop − 1``.

    See the module docstring for the positions: ``batch_size`` is the global micro-batch, of
    which this rank's share (``batch_size / world_size`` keys) comes per micro-batch,
    ``accumulation`` micro-batches per step.
    """

    def __init__(
        self,
        size: int,
        *,
        batch_size: int,
        accumulation: int = 1,
        seed: int = 0,
        start: int = 0,
        stop: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if size < 1:
            raise ValueError("the training set is empty")
        check_global_batch(batch_size, world_size)
        self.size = size
        self.batch_size = batch_size
        self.share = batch_size // world_size
        self.accumulation = accumulation
        self.seed = seed
        self.start = start
        self.stop = stop
        self.rank = rank
        self.world_size = world_size
        self._epoch = -1
        self._order = torch.empty(0, dtype=torch.long)

    def __len__(self) -> int:
        return max(self.stop - self.start, 0) * self.accumulation

    def _index(self, position: int) -> int:
        epoch, offset = divmod(position, self.size)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            self._order = torch.randperm(self.size, generator=generator)
            self._epoch = epoch
        return int(self._order[offset])

    def keys(self, step: int, micro: int) -> list[tuple[int, int]]:
        """The keys of micro-batch ``micro`` of step ``step`` on this rank."""
        first = (step * self.accumulation + micro) * self.batch_size + self.rank * self.share
        positions = range(first, first + self.share)
        return [(self._index(p), sample_seed(self.seed, p)) for p in positions]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.stop):
            for micro in range(self.accumulation):
                yield self.keys(step, micro)


def train_loader(
    dataset: LabelledImages,
    transform: Compose,
    sampler: StepSampler,
    *,
    workers: int,
    pin_memory: bool = False,
) -> DataLoader[tuple[Tensor, Tensor]]:
    """A loader of the ``sampler``'s micro-batches, augmented by ``transform``."""
    return DataLoader(
        _Keyed(dataset, transform),
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        generator=torch.Generator().manual_seed(sampler.seed),
    )


class _Transformed(Dataset[tuple[Tensor, Tensor]]):
    """A dataset with a deterministic (evaluation) transform applied."""

    def __init__(self, dataset: LabelledImages, transform: Transform) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image, label = self.dataset[index]
        return self.transform(image, label)


def eval_loader(
    dataset: LabelledImages,
    transform: Transform,
    *,
    batch_size: int,
    workers: int,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader[tuple[Tensor, Tensor]]:
    """An in-order loader of ``transform(*dataset[i])``; with ``world_size`` > 1 only this
    ``rank``'s shard (every ``world_size``-th item from ``rank``), as
    :func:`~fishertune.evaluation.domains.evaluate_domains` expects under torch.distributed."""
    if world_size > 1:
        dataset = Subset(dataset, range(rank, len(dataset), world_size))  # type: ignore[arg-type]
    return DataLoader(_Transformed(dataset, transform), batch_size=batch_size, num_workers=workers)


def training_transform(
    crop: tuple[int, int],
    scale_range: Sequence[float],
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> Compose:
    """Rein's training pipeline at ``crop`` ``(H, W)``, rescaled by a ratio in ``scale_range``
    ``[low, high]`` around the crop's short side."""
    low, high = scale_range
    return train_transform(mean, std, crop=crop, scale=min(crop), ratio_range=(low, high))


def evaluation_transform(mean: tuple[float, ...], std: tuple[float, ...]) -> Compose:
    """Normalisation only (the protocol resizes)."""
    return test_transform(mean, std)
