"""Which elements of which tensors are selected: per tensor, sorted flat indices (method.md §7).

A :class:`Selection` is what the selectors produce (:func:`~fishertune.selection.top_k`,
:func:`~fishertune.selection.random_selection`, :func:`~fishertune.selection.group_selection`),
what a sparse tuner holds and what :class:`~fishertune.optim.SparseAdamW` updates: the same
index tensors throughout, never rebuilt from masks. Memory is proportional to the number of
selected elements (int32 indices below 2³¹ elements per tensor), not to the tensors' sizes.

A selection is immutable; :meth:`Selection.grow` returns a larger one and refuses to drop an
element, which is how the nested selections of §7 (δ_min → δ_max) are kept nested.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import Tensor

__all__ = ["Selection", "index_dtype", "mark_trainable"]

INT32_LIMIT = 2**31
"""Tensors with fewer elements than this index them with int32, others with int64."""


def index_dtype(numel: int) -> torch.dtype:
    """The dtype of a tensor's flat element indices: int32 below 2³¹ elements, else int64
    (selections, the optimiser's state, the sparse tuners' saved deltas)."""
    return torch.int32 if numel < INT32_LIMIT else torch.int64


def _size(shape: torch.Size | Sequence[int]) -> torch.Size:
    return torch.Size(shape)


class Selection(Mapping[str, Tensor]):
    """Per named tensor, the sorted flat (row-major) indices of its selected elements.

    Reads as a mapping ``name → indices`` (1-D, strictly increasing, :func:`index_dtype` of the
    tensor's size, on the device they were made on); :meth:`shape` gives each tensor's shape.
    Build one with :meth:`from_masks`, :meth:`whole`, :meth:`empty` or the selectors; the
    constructor checks that every index tensor is sorted, unique and in range.
    """

    __slots__ = ("_indices", "_shapes")

    def __init__(
        self,
        indices: Mapping[str, Tensor],
        shapes: Mapping[str, torch.Size | Sequence[int]],
    ) -> None:
        if set(indices) != set(shapes):
            differ = sorted(set(indices) ^ set(shapes))
            raise ValueError(f"selection: indices and shapes name different tensors: {differ[:5]}")
        checked: dict[str, Tensor] = {}
        for name, index in indices.items():
            size = _size(shapes[name])
            checked[name] = _checked_index(name, index, size.numel())
        self._indices = checked
        self._shapes = {name: _size(shapes[name]) for name in indices}

    @classmethod
    def _trusted(cls, indices: dict[str, Tensor], shapes: dict[str, torch.Size]) -> Selection:
        """A selection from indices known to be valid (made by this package's selectors)."""
        selection = cls.__new__(cls)
        selection._indices = {
            name: index.to(index_dtype(shapes[name].numel())) for name, index in indices.items()
        }
        selection._shapes = shapes
        return selection

    @classmethod
    def from_masks(cls, masks: Mapping[str, Tensor], what: str = "masks") -> Selection:
        """The True elements of each bool mask (``what`` names the masks in errors)."""
        indices, shapes = {}, {}
        for name, mask in masks.items():
            if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
                kind = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
                raise TypeError(f"{what}[{name!r}] must be a bool tensor, got {kind}")
            indices[name] = mask.reshape(-1).nonzero().view(-1)
            shapes[name] = mask.shape
        return cls._trusted(indices, shapes)

    @classmethod
    def whole(
        cls,
        shapes: Mapping[str, torch.Size | Sequence[int]],
        device: torch.device | str | None = None,
    ) -> Selection:
        """Every element of every tensor."""
        return cls._uniform(shapes, device, every=True)

    @classmethod
    def empty(
        cls,
        shapes: Mapping[str, torch.Size | Sequence[int]],
        device: torch.device | str | None = None,
    ) -> Selection:
        """No element of any tensor."""
        return cls._uniform(shapes, device, every=False)

    @classmethod
    def _uniform(
        cls,
        shapes: Mapping[str, torch.Size | Sequence[int]],
        device: torch.device | str | None,
        every: bool,
    ) -> Selection:
        sizes = {name: _size(shape) for name, shape in shapes.items()}
        return cls._trusted(
            {n: torch.arange(s.numel() if every else 0, device=device) for n, s in sizes.items()},
            sizes,
        )

    # ---------------------------------------------------------------- mapping
    def __getitem__(self, name: str) -> Tensor:
        return self._indices[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._indices)

    def __len__(self) -> int:
        return len(self._indices)

    def __repr__(self) -> str:
        return f"Selection({self.count} elements of {len(self)} tensors)"

    # ---------------------------------------------------------------- sizes
    def shape(self, name: str) -> torch.Size:
        """The shape of tensor ``name``."""
        return self._shapes[name]

    @property
    def shapes(self) -> dict[str, torch.Size]:
        """Every tensor's shape, by name."""
        return dict(self._shapes)

    @property
    def count(self) -> int:
        """Number of selected elements in all tensors."""
        return sum(index.numel() for index in self._indices.values())

    @property
    def numel(self) -> int:
        """Number of elements of all tensors (selected or not)."""
        return sum(shape.numel() for shape in self._shapes.values())

    def is_whole(self, name: str) -> bool:
        """Whether every element of tensor ``name`` is selected."""
        return self._indices[name].numel() == self._shapes[name].numel()

    # ---------------------------------------------------------------- views
    def mask(self, name: str) -> Tensor:
        """A bool mask of tensor ``name``'s shape, True on its selected elements."""
        index = self._indices[name]
        flat = torch.zeros(self._shapes[name].numel(), dtype=torch.bool, device=index.device)
        return flat.index_fill_(0, index.long(), True).view(self._shapes[name])

    def as_masks(self) -> dict[str, Tensor]:
        """:meth:`mask` of every tensor (for reports and gradient masks)."""
        return {name: self.mask(name) for name in self._indices}

    def restrict(self, names: Sequence[str] | set[str]) -> Selection:
        """The same index tensors for the tensors ``names`` only."""
        wanted = set(names)
        return Selection._trusted(
            {n: i for n, i in self._indices.items() if n in wanted},
            {n: s for n, s in self._shapes.items() if n in wanted},
        )

    def to(self, device: torch.device | str) -> Selection:
        """The selection with its indices on ``device``."""
        return Selection._trusted(
            {n: i.to(device) for n, i in self._indices.items()}, dict(self._shapes)
        )

    def overlap(self, other: Selection) -> int:
        """Number of elements selected in both (tensors of the same name and shape)."""
        shared = 0
        for name, index in self._indices.items():
            if name in other:
                self._check_same_shape(name, other)
                theirs = other[name].to(device=index.device, dtype=index.dtype)
                shared += int(torch.isin(index, theirs, assume_unique=True).sum())
        return shared

    # ---------------------------------------------------------------- growth
    def grow(self, larger: Selection) -> Selection:
        """This selection with the tensors of ``larger`` replaced by its (superset) indices,
        moved to where this selection's indices live (device and dtype; no copy when they
        already do).

        Every tensor of ``larger`` must be one of this selection's, of the same shape, and hold
        every element selected here (selections only grow, §7); tensors ``larger`` does not name
        keep their indices. Raises ``ValueError`` naming the first tensor that would shrink.
        """
        unknown = sorted(set(larger) - set(self._indices))
        if unknown:
            raise ValueError(f"the grown selection names tensors not selected from: {unknown[:5]}")
        grown = dict(self._indices)
        for name in larger:
            self._check_same_shape(name, larger)
            old = self._indices[name]
            grown[name] = larger[name].to(device=old.device, dtype=old.dtype)
            if not bool(torch.isin(old, grown[name], assume_unique=True).all()):
                raise ValueError(
                    f"selections may only grow: the new selection of {name!r} drops elements "
                    f"of the tensor of shape {tuple(self._shapes[name])} that are currently "
                    "selected"
                )
        return Selection._trusted(grown, dict(self._shapes))

    def _check_same_shape(self, name: str, other: Selection) -> None:
        if other.shape(name) != self._shapes[name]:
            raise ValueError(
                f"selection of {name!r}: shape {tuple(other.shape(name))} differs from "
                f"{tuple(self._shapes[name])}"
            )


def _checked_index(name: str, index: object, numel: int) -> Tensor:
    """``index`` as sorted unique in-range flat indices of a tensor of ``numel`` elements."""
    if not isinstance(index, Tensor) or index.dim() != 1 or index.is_floating_point():
        raise TypeError(f"selection[{name!r}] must be a 1-D integer tensor of flat indices")
    if index.dtype == torch.bool or index.is_complex():
        raise TypeError(f"selection[{name!r}] must be a 1-D integer tensor of flat indices")
    if index.numel():
        if not 0 <= int(index.min()) <= int(index.max()) < numel:
            raise ValueError(f"selection[{name!r}]: indices out of range for {numel} elements")
        if index.numel() > 1 and not bool((index[1:] > index[:-1]).all()):
            raise ValueError(f"selection[{name!r}]: indices must be sorted and unique")
    return index.to(index_dtype(numel))


def mark_trainable(selection: Selection, parameters: Mapping[str, Tensor]) -> None:
    """Let backward compute gradients of exactly the tensors holding a selected element.

    The one place that sets ``requires_grad`` from a selection (the sparse tuners before an
    optimiser exists, :class:`~fishertune.optim.SparseAdamW` afterwards); ``parameters`` maps
    the selection's names to the tensors.
    """
    for name, index in selection.items():
        parameters[name].requires_grad_(index.numel() > 0)
