"""Exact global top-k of many score tensors, as a Selection (paper Eq. 16, Algorithm 1; §7).

The selection is a radix select on order-preserving integer keys of the floats' bit patterns:
a few ``torch.bincount`` histogram passes over every tensor, chunk by chunk, find the exact
k-th key without concatenating or sorting the scores, so it scales to the hundreds of millions
of elements of a ViT-L backbone, on whatever device the scores live.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from fishertune.selection.selection import Selection

__all__ = ["budget_count", "check_fraction", "top_k"]

CHUNK_ELEMENTS = 1 << 22
"""Elements processed at once; bounds the int64 key temporaries to a few tens of MB."""

_DIGIT_BITS = 16
_RADIX = 1 << _DIGIT_BITS
_DIGIT_MASK = _RADIX - 1
_TOP_FLIP = 1 << (_DIGIT_BITS - 1)
_NARROW_MAGNITUDE = (1 << 31) - 1
_WIDE_MAGNITUDE = (1 << 63) - 1


@dataclass(frozen=True)
class _Entry:
    """One score tensor, flattened row-major, with its flat candidate and kept masks."""

    name: str
    shape: torch.Size
    flat: Tensor
    candidates: Tensor | None  # candidate and not kept; None means every element
    kept: Tensor | None  # sorted flat indices of the kept elements; None means none
    n_candidates: int

    @property
    def n_kept(self) -> int:
        return 0 if self.kept is None else self.kept.numel()


def _chunks(entry: _Entry) -> Iterator[tuple[slice, Tensor, Tensor | None]]:
    """Yield ``(slice, scores, candidates)`` over consecutive chunks of ``entry``."""
    numel = entry.flat.numel()
    for start in range(0, numel, CHUNK_ELEMENTS):
        part = slice(start, min(start + CHUNK_ELEMENTS, numel))
        cand = None if entry.candidates is None else entry.candidates[part]
        yield part, entry.flat[part], cand


def _signed_keys(values: Tensor, wide: bool) -> Tensor:
    """Int64 keys ordered exactly like the float values (``-0.0`` and ``+0.0`` share a key).

    ``wide`` uses the float64 bit pattern (keys span 64 bits); otherwise float32 (32 bits,
    sign-extended). Non-negative floats keep their bits; negative ones flip every bit but the
    sign, which reverses their magnitude order.
    """
    if wide:
        bits = (values.to(torch.float64) + 0.0).view(torch.int64)
        magnitude = _WIDE_MAGNITUDE
    else:
        bits = (values.to(torch.float32) + 0.0).view(torch.int32).to(torch.int64)
        magnitude = _NARROW_MAGNITUDE
    return torch.where(bits < 0, bits ^ magnitude, bits)


def _part_of(what: str, name: str, selection: Selection, score: Tensor) -> Tensor:
    """The flat indices of ``selection[name]`` on the score's device, shapes checked."""
    if selection.shape(name) != score.shape:
        raise ValueError(
            f"{what}[{name!r}] has shape {tuple(selection.shape(name))} but scores[{name!r}] "
            f"has shape {tuple(score.shape)}"
        )
    return selection[name].to(device=score.device, dtype=torch.int64)


def _prepare(
    scores: Mapping[str, Tensor],
    candidates: Selection | None,
    keep: Selection | None,
) -> list[_Entry]:
    """Validate the inputs and flatten them into entries (in the order of ``scores``)."""
    for what, given in (("candidates", candidates), ("keep", keep)):
        if given is not None:
            if not isinstance(given, Selection):
                raise TypeError(f"{what} must be a Selection, got {type(given).__name__}")
            unknown = [name for name in given if name not in scores]
            if unknown:
                raise ValueError(f"{what} has keys not in scores: {unknown}")
    entries = []
    for name, score in scores.items():
        if not isinstance(score, Tensor) or not score.is_floating_point():
            dtype = score.dtype if isinstance(score, Tensor) else type(score).__name__
            raise TypeError(
                f"scores[{name!r}] has type {dtype}; top_k needs floating-point tensors "
                "(cast integer scores with .double())"
            )
        flat = score.detach().reshape(-1)
        for start in range(0, flat.numel(), CHUNK_ELEMENTS):
            if bool(torch.isnan(flat[start : start + CHUNK_ELEMENTS]).any()):
                raise ValueError(f"scores[{name!r}] contains NaN")
        cand = None
        n_candidates = flat.numel()
        if candidates is not None:
            if name not in candidates:
                raise ValueError(
                    f"candidates has no entry for scores[{name!r}]; give one for every scored "
                    "tensor (an empty one to exclude a tensor)"
                )
            index = _part_of("candidates", name, candidates, score)
            cand = candidates.mask(name).to(score.device).reshape(-1)
            n_candidates = index.numel()
        kept = None
        if keep is not None and name in keep:
            kept = _part_of("keep", name, keep, score)
            if cand is not None and not bool(cand[kept].all()):
                raise ValueError(f"keep[{name!r}] contains elements that are not candidates")
            if kept.numel():
                if cand is None:
                    cand = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
                cand[kept] = False
        entries.append(_Entry(name, score.shape, flat, cand, kept, n_candidates))
    return entries


def check_fraction(fraction: float, name: str = "fraction") -> float:
    """``fraction`` if it is a share of a population, 0 ≤ fraction ≤ 1; else a ValueError
    naming ``name`` (NaN is refused). The one range check of every budget share: top-k's
    ``fraction``, a sparse method's ``fraction`` and ``min_fraction``, an agreement's k."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {fraction}")
    return fraction


def budget_count(fraction: float, population: int) -> int:
    """round(fraction × population): the number of elements a budget share of
    ``population`` elements selects (method.md §7), ``fraction`` checked by
    :func:`check_fraction`."""
    return round(check_fraction(fraction) * population)


def _resolve_count(
    fraction: float | None, count: int | None, total: int | None, n_candidates: int
) -> int:
    """The number of elements to select, validated against the candidate population."""
    if (fraction is None) == (count is None):
        raise ValueError("give exactly one of fraction= or count=")
    if count is not None:
        if total is not None:
            raise ValueError("total= only applies with fraction=")
        k = operator.index(count)
        if k < 0:
            raise ValueError(f"count must be non-negative, got {k}")
        source = f"count={k}"
    else:
        assert fraction is not None
        population = n_candidates if total is None else operator.index(total)
        if population < 0:
            raise ValueError(f"total must be non-negative, got {population}")
        k = budget_count(fraction, population)
        source = f"round(fraction={fraction} × total={population}) = {k}"
    if k > n_candidates:
        raise ValueError(f"{source} exceeds the {n_candidates} candidate elements")
    return k


def _active_digits(entries: list[_Entry], level: int, prefix: int, wide: bool) -> Iterator[Tensor]:
    """Yield, chunk by chunk, the ``level``-th 16-bit digit of the candidates matching ``prefix``.

    Only candidates whose higher digits equal ``prefix`` count. The top digit has its sign bit
    flipped, so that digits order as unsigned numbers exactly like the signed keys.
    """
    key_bits = 64 if wide else 32
    shift = key_bits - _DIGIT_BITS * (level + 1)
    for entry in entries:
        for _, values, cand in _chunks(entry):
            keys = _signed_keys(values, wide)
            active = cand
            if level > 0:
                same_prefix = (keys >> (shift + _DIGIT_BITS)) == prefix
                active = same_prefix if active is None else active & same_prefix
            if active is not None:
                keys = keys[active]
            digits = (keys >> shift) & _DIGIT_MASK
            yield digits ^ _TOP_FLIP if level == 0 else digits


def _batched(parts: Iterator[Tensor]) -> Iterator[Tensor]:
    """Concatenate consecutive small tensors of one device into batches of ≲ CHUNK_ELEMENTS.

    Many small tensors (biases, norms) then cost few histogram calls; a chunk never exceeds
    ``CHUNK_ELEMENTS``, so neither does a batch.
    """
    group: list[Tensor] = []
    size = 0
    for part in parts:
        if group and (size + part.numel() > CHUNK_ELEMENTS or part.device != group[0].device):
            yield torch.cat(group)
            group, size = [], 0
        group.append(part)
        size += part.numel()
    if group:
        yield torch.cat(group)


def _threshold(entries: list[_Entry], need: int, wide: bool) -> tuple[int, int]:
    """Radix-select the ``need``-th largest candidate key (``need`` ≥ 1).

    Returns ``(threshold, ties)``: every candidate with key > threshold is selected, plus the
    first ``ties`` candidates (in global position order) whose key equals threshold.
    """
    prefix = 0
    remaining = need
    for level in range((64 if wide else 32) // _DIGIT_BITS):
        hist: Tensor | None = None
        for digits in _batched(_active_digits(entries, level, prefix, wide)):
            counts = torch.bincount(digits, minlength=_RADIX).cpu()
            if hist is None:
                hist = counts
            else:
                hist += counts
        assert hist is not None  # need ≥ 1 candidate, so some chunk was seen
        at_or_below = hist.cumsum(0)  # [d]: candidates whose digit is ≤ d
        total = int(at_or_below[-1])
        # the largest digit d with at least `remaining` candidates at or above it
        digit = int(torch.searchsorted(at_or_below, total - remaining, right=True))
        remaining -= total - int(at_or_below[digit])
        prefix = digit - _TOP_FLIP if level == 0 else (prefix << _DIGIT_BITS) | digit
    return prefix, remaining


def _select(entries: list[_Entry], threshold: int, ties: int, wide: bool) -> Selection:
    """The selection: kept elements, candidates above threshold, the first ``ties`` ties."""
    indices, shapes = {}, {}
    for entry in entries:
        found = [] if entry.kept is None else [entry.kept]
        for part, values, cand in _chunks(entry):
            keys = _signed_keys(values, wide)
            chosen = keys > threshold
            if cand is not None:
                chosen &= cand
            if ties > 0:
                tied = keys == threshold
                if cand is not None:
                    tied &= cand
                first = tied.nonzero()[:ties, 0]
                chosen[first] = True
                ties -= first.numel()
            found.append(chosen.nonzero().view(-1) + part.start)
        index = torch.cat(found) if found else entry.flat.new_zeros(0, dtype=torch.int64)
        indices[entry.name] = index.sort().values if entry.kept is not None else index
        shapes[entry.name] = entry.shape
    return Selection._trusted(indices, shapes)


def top_k(
    scores: Mapping[str, Tensor],
    fraction: float | None = None,
    count: int | None = None,
    *,
    total: int | None = None,
    candidates: Selection | None = None,
    keep: Selection | None = None,
) -> Selection:
    """Select the globally highest-scoring elements across all tensors (paper Eq. 16, Alg. 1).

    Ranks every candidate element of every tensor in ``scores`` on one global scale (method.md
    §7) and returns the :class:`~fishertune.selection.Selection` of exactly ``count`` elements
    in all, or ``round(fraction * total)`` (Python ``round``), one entry per score tensor
    (indices on the scores' devices). ``total`` defaults to the number of candidate elements;
    pass the size of a larger population to express the paper's budget ("5% of all backbone
    parameters") while only some tensors (Q/K/V/FFN) hold candidates.

    Ties are broken deterministically: the global order is score descending, then position
    ascending, where position is the order of the keys in ``scores`` and then the flat
    row-major index. ``-0.0`` equals ``+0.0``; ``±inf`` are ordinary extremes; NaN is an error.
    With the same scores, a larger ``count`` therefore gives a superset (nested selections).

    Args:
        scores: name → floating-point score tensor (float16/bfloat16/float32 are ranked on
            float32 keys, float64 on float64 keys). Integer scores are rejected.
        fraction: share of ``total`` to select, in [0, 1]. Exactly one of fraction/count.
        count: number of elements to select, at most the number of candidate elements.
        total: population that ``fraction`` refers to (only with ``fraction``).
        candidates: the elements that may be selected, an entry for every key of ``scores``
            (an empty one excludes a tensor); None: every element.
        keep: elements that must stay selected (candidates, counted in the budget); the rest
            of the budget is filled by score among the other candidates. Passing the previous
            selection keeps a growing selection nested even when the scores are re-estimated.
            Tensors it does not name keep nothing.

    Exactness at scale: scores are mapped to order-preserving integer keys of their bit
    patterns and an exact radix select (16-bit digits, two passes for 32-bit keys, four for
    64-bit) finds the threshold key with ``torch.bincount`` histograms accumulated over all
    tensors, chunk by chunk, with no concatenation and no sort.
    """
    entries = _prepare(scores, candidates, keep)
    n_kept = sum(e.n_kept for e in entries)
    k = _resolve_count(fraction, count, total, sum(e.n_candidates for e in entries))
    if n_kept > k:
        raise ValueError(f"keep holds {n_kept} elements, more than the {k} to select")
    need = k - n_kept
    wide = any(e.flat.dtype == torch.float64 for e in entries)
    if need == 0:
        return Selection._trusted(
            {
                e.name: e.flat.new_zeros(0, dtype=torch.int64) if e.kept is None else e.kept
                for e in entries
            },
            {e.name: e.shape for e in entries},
        )
    threshold, ties = _threshold(entries, need, wide)
    return _select(entries, threshold, ties, wide)
