"""Named groups of parameter elements (Q / K / V / FFN, layer ranges) as selections.

Used to restrict a selection to a part of the candidate set, e.g. the paper's Table 4 ablation
(random Q, K or V) or layer-group studies; the result goes to ``candidates=`` of
:func:`~fishertune.selection.top_k` or :func:`~fishertune.selection.random_selection`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

from fishertune.selection.selection import Selection

__all__ = ["QKV_GROUPS", "GroupSlice", "group_selection", "qkv_slices"]

QKV_GROUPS = ("q", "k", "v")


@dataclass(frozen=True)
class GroupSlice:
    """The elements ``param[index]`` belong to ``group``.

    ``index`` holds one slice per leading dimension (trailing dimensions are taken whole);
    ``()`` is the whole tensor. Example: rows ``[C:2C]`` of a fused ``qkv`` weight of shape
    ``(3C, C)`` are the keys: ``GroupSlice("blocks.0.attn.qkv.weight", (slice(C, 2 * C),), "k")``.
    """

    param: str
    index: tuple[slice, ...]
    group: str


def qkv_slices(param: str, shape: torch.Size | Sequence[int]) -> list[GroupSlice]:
    """Split a fused ``qkv`` weight ``(3C, ...)`` or bias ``(3C,)`` into groups "q", "k", "v".

    Rows ``[0:C]`` are Q, ``[C:2C]`` K and ``[2C:3C]`` V (method.md §2).
    """
    if len(shape) == 0 or shape[0] % 3 != 0:
        raise ValueError(f"{param!r}: a fused qkv tensor needs a first dimension 3C, got {shape}")
    width = shape[0] // 3
    return [
        GroupSlice(param, (slice(i * width, (i + 1) * width),), group)
        for i, group in enumerate(QKV_GROUPS)
    ]


def _check_index(item: GroupSlice, shape: torch.Size) -> None:
    """Raise unless every slice of ``item.index`` lies within ``shape``."""
    if len(item.index) > len(shape):
        raise ValueError(f"{item}: {len(item.index)} slices for a tensor of shape {tuple(shape)}")
    for dim, (part, size) in enumerate(zip(item.index, shape[: len(item.index)], strict=True)):
        if not isinstance(part, slice):
            raise TypeError(f"{item}: index entries must be slices, got {part!r}")
        if part.step is not None and part.step < 1:
            raise ValueError(f"{item}: slice step must be positive, got {part.step}")
        for bound in (part.start, part.stop):
            if bound is not None and not -size <= bound <= size:
                raise ValueError(
                    f"{item}: slice {part} is out of range for dimension {dim} of size {size}"
                )


def group_selection(
    shapes: Mapping[str, torch.Size | Sequence[int]],
    groups: Iterable[GroupSlice],
    wanted: str | Iterable[str],
    *,
    device: torch.device | str | None = None,
) -> Selection:
    """The elements of the ``wanted`` groups, an entry per name in ``shapes``.

    Names that no wanted group touches get an empty entry, so the result can be passed
    directly as ``candidates=``. Raises ``ValueError`` for a slice naming a parameter not in
    ``shapes``, a slice out of range, or a wanted group that no slice defines.
    """
    wanted_set = {wanted} if isinstance(wanted, str) else set(wanted)
    sizes = {name: torch.Size(shape) for name, shape in shapes.items()}
    masks = {
        name: torch.zeros(size, dtype=torch.bool, device=device) for name, size in sizes.items()
    }
    defined = set()
    for item in groups:
        if item.param not in sizes:
            raise ValueError(f"{item}: parameter {item.param!r} is not in shapes")
        _check_index(item, sizes[item.param])
        defined.add(item.group)
        if item.group in wanted_set:
            masks[item.param][item.index] = True
    missing = sorted(wanted_set - defined)
    if missing:
        raise ValueError(f"wanted groups {missing} are not defined; defined: {sorted(defined)}")
    return Selection.from_masks(masks)
