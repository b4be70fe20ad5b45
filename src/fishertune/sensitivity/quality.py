"""How much a sensitivity estimate means: agreement of two score dictionaries.

A selection by sensitivity is only as good as the ranking it follows. Two figures describe
how far two score dictionaries (two estimates of the same quantity, or an estimate and a
reference) agree on the elements a budget selects and on the whole order:

- the Spearman rank correlation over all compared elements (1: the same order, 0: unrelated);
- the overlap of their top-k sets, |top-k(a) ∩ top-k(b)| / k, for the budget's k; two
  unrelated rankings overlap by k/N on average (``chance_overlap``).

Applied to estimates from two disjoint halves of the data, they give the split-half
reliability of an estimator; applied to the stable estimate and a diagonal Fisher on the same
batches, the agreement of Eq. 14's estimate with the Fisher it estimates (method.md §6).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor

from fishertune.selection import Selection, budget_count, top_k

__all__ = [
    "NEAR_CHANCE_OVERLAP",
    "NEAR_CHANCE_SPEARMAN",
    "ONE_TERM_OVERLAP",
    "Agreement",
    "DomainTerm",
    "EstimateQuality",
    "score_agreement",
    "spearman",
    "split_batches",
    "topk_overlap",
]

NEAR_CHANCE_SPEARMAN = 0.2
"""Below this rank correlation an agreement is reported as near chance."""
NEAR_CHANCE_OVERLAP = 2.0
"""A top-k overlap below this multiple of the chance overlap k/N is reported as near chance."""
ONE_TERM_OVERLAP = 0.95
"""A DRF selection that shares at least this share of its elements with the F selection or the
ΔF̃ selection is (almost) that selection: the other term does not count (method.md §5)."""
_RANK_SAMPLE = 2**24
"""Spearman's ρ is computed on at most this many elements (an even stride over all tensors):
the ranks of a ViT-L's 300M candidates would take gigabytes, a 16M sample changes ρ by < 1e-3."""

T = TypeVar("T")


@dataclass(frozen=True)
class Agreement:
    """Agreement of two score dictionaries (see the module docstring).

    Attributes:
        spearman: rank correlation over the compared elements (ties take their mean rank).
        overlap: |top-k(a) ∩ top-k(b)| / k.
        count: k, the size of the compared top sets.
        elements: N, the number of compared elements.
    """

    spearman: float
    overlap: float
    count: int
    elements: int

    @property
    def chance_overlap(self) -> float:
        """The expected overlap of two unrelated rankings, k/N."""
        return self.count / self.elements if self.elements else math.nan

    @property
    def near_chance(self) -> bool:
        """ρ < 0.2, or an overlap below twice the chance overlap."""
        return (
            not self.spearman >= NEAR_CHANCE_SPEARMAN
            or not self.overlap >= NEAR_CHANCE_OVERLAP * self.chance_overlap
        )

    def describe(self) -> str:
        """E.g. ``Spearman 0.97, top-5.0% overlap 0.81 (chance 0.05)``."""
        share = 100 * self.chance_overlap
        return (
            f"Spearman {self.spearman:.2f}, top-{share:.3g}% overlap {self.overlap:.2f} "
            f"(chance {self.chance_overlap:.2g})"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields, with ``chance_overlap`` and ``near_chance``."""
        return {
            **asdict(self),
            "chance_overlap": self.chance_overlap,
            "near_chance": self.near_chance,
        }


def _compared(
    a: Mapping[str, Tensor], b: Mapping[str, Tensor]
) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
    """Both dictionaries as float tensors on a's devices and the mask of elements finite in
    both (non-candidates carry −inf in a tuner's scores)."""
    if set(a) != set(b):
        differ = sorted(set(a) ^ set(b))
        raise ValueError(f"the score dictionaries cover different tensors: {differ[:5]}")
    if not a:
        raise ValueError("the score dictionaries are empty")
    fa, fb, valid = {}, {}, {}
    for key, value in a.items():
        if value.shape != b[key].shape:
            raise ValueError(
                f"shape mismatch for {key!r}: {tuple(value.shape)} vs {tuple(b[key].shape)}"
            )
        fa[key] = value.detach().float()
        fb[key] = b[key].detach().to(value.device).float()
        if bool(fa[key].isnan().any()) or bool(fb[key].isnan().any()):
            raise ValueError(f"scores of {key!r} contain NaN")
        valid[key] = fa[key].isfinite() & fb[key].isfinite()
    return fa, fb, valid


def _ranks(values: Tensor) -> Tensor:
    """1-based ranks, ties sharing their mean rank (float64)."""
    ordered, order = values.sort()
    _, inverse, counts = torch.unique_consecutive(ordered, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    mean_rank = ends - (counts.double() - 1) / 2
    ranks = torch.empty_like(values, dtype=torch.float64)
    ranks[order] = mean_rank[inverse]
    return ranks


def spearman(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
    """Spearman's rank correlation of two score dictionaries over the elements finite in both.

    Ties take their mean rank (the usual definition, as ``scipy.stats.spearmanr``). Above 2²⁴
    elements an even stride of them is ranked. NaN when either side is constant.
    """
    fa, fb, valid = _compared(a, b)
    total = sum(int(v.sum()) for v in valid.values())
    stride = max(1, math.ceil(total / _RANK_SAMPLE))
    xa = torch.cat([fa[k][valid[k]].flatten().cpu() for k in fa])[::stride]
    xb = torch.cat([fb[k][valid[k]].flatten().cpu() for k in fa])[::stride]
    if xa.numel() < 2:
        return math.nan
    ra, rb = _ranks(xa), _ranks(xb)
    ra -= ra.mean()
    rb -= rb.mean()
    denominator = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / denominator if denominator > 0 else math.nan


def topk_overlap(a: Mapping[str, Tensor], b: Mapping[str, Tensor], count: int) -> float:
    """|top-k(a) ∩ top-k(b)| / k over the elements finite in both, with the exact global
    top-k of :func:`~fishertune.selection.top_k` (deterministic ties)."""
    fa, fb, valid = _compared(a, b)
    available = sum(int(v.sum()) for v in valid.values())
    if not 0 < count <= available:
        raise ValueError(f"count must lie in [1, {available}] (compared elements), got {count}")
    compared = Selection.from_masks(valid)
    top_a = top_k(fa, count=count, candidates=compared)
    top_b = top_k(fb, count=count, candidates=compared)
    return top_a.overlap(top_b) / count


def score_agreement(
    a: Mapping[str, Tensor],
    b: Mapping[str, Tensor],
    *,
    fraction: float | None = None,
    count: int | None = None,
) -> Agreement:
    """Spearman's ρ and the top-k overlap of ``a`` and ``b`` (see the module docstring).

    k is ``count``, or ``round(fraction × N)`` with N the elements finite in both (at least 1).
    """
    if (fraction is None) == (count is None):
        raise ValueError("pass exactly one of fraction and count")
    _, _, valid = _compared(a, b)
    elements = sum(int(v.sum()) for v in valid.values())
    if count is None:
        assert fraction is not None
        count = max(1, budget_count(fraction, elements))
    return Agreement(spearman(a, b), topk_overlap(a, b, count), count, elements)


def split_batches(batches: Sequence[T]) -> tuple[list[T], list[T]]:
    """Two disjoint halves of a list of batches (even and odd positions), for split-half
    reliability; needs at least two batches."""
    if len(batches) < 2:
        raise ValueError(
            f"split-half reliability needs at least 2 estimation batches, got {len(batches)}"
        )
    return list(batches[0::2]), list(batches[1::2])


@dataclass(frozen=True)
class DomainTerm:
    """Whether the DRF's two terms both count (method.md §5): how far the DRF selection is the
    selection of F alone or of the domain term ΔF̃ alone, at the budget's k.

    Attributes:
        combine: how F and ΔF̃ were combined (``"normalised"``, ``"rank"`` or ``"paper"``).
        coef: c, the weight of the domain term.
        overlap_f: |top-k(DRF) ∩ top-k(F)| / k.
        overlap_df: |top-k(DRF) ∩ top-k(ΔF̃)| / k.
        spearman_f_df: Spearman's ρ of F and ΔF̃ over the candidates (1: the domain term ranks
            as F does and cannot change a selection; low: it carries its own information).
        count: k, the size of the compared top sets (the final budget).
        elements: the number of candidate elements.
    """

    combine: str
    coef: float
    overlap_f: float
    overlap_df: float
    spearman_f_df: float
    count: int
    elements: int

    def warnings(self) -> list[str]:
        """One line when the DRF selection is (≥ 95%) the F or the ΔF̃ selection."""
        for share, same, other in (
            (self.overlap_f, "F", "the domain term ΔF"),
            (self.overlap_df, "ΔF", "the task Fisher F"),
        ):
            if share >= ONE_TERM_OVERLAP:
                return [
                    f"DR-FIM ({self.combine}): the DRF selection is {100 * share:.1f}% the "
                    f"{same} selection; {other} does not count"
                ]
        return []

    def describe(self) -> str:
        """E.g. ``DRF (normalised, c 0.135) shares 62.0% of its top-5% with F, 41.0% with ΔF;
        Spearman(F, ΔF) 0.31``."""
        share = 100 * self.count / self.elements if self.elements else math.nan
        return (
            f"DRF ({self.combine}, c {self.coef:.3g}) shares {100 * self.overlap_f:.1f}% of its "
            f"top-{share:.3g}% with F, {100 * self.overlap_df:.1f}% with ΔF; "
            f"Spearman(F, ΔF) {self.spearman_f_df:.2f}"
        )


@dataclass(frozen=True)
class EstimateQuality:
    """What an estimation stage knows about its own scores.

    Attributes:
        reliability: per score (``"F"``, ``"dF"``, ``"DRF"``), the agreement of the estimates
            from the two halves of the estimation batches (:func:`split_batches`); empty with
            a single batch.
        agreement: the stable estimate's F against a diagonal Fisher (per-sample squared
            gradients, the same label mode) on the same batches; None for the diagonal
            estimator itself or when not computed.
        estimator: ``"variational"`` or ``"diagonal"``.
        hyper: the values the estimate used (e.g. γ, the range of τ and of the floor γ/τ²,
            or the diagonal estimate's floor φ, the median of F).
        domain_term: whether both terms of the DRF count (:class:`DomainTerm`); None when no
            shifted estimate was made (the score ``"F"``).
    """

    reliability: dict[str, Agreement]
    agreement: Agreement | None
    estimator: str
    hyper: dict[str, float]
    domain_term: DomainTerm | None = None

    def warnings(self) -> list[str]:
        """One line per figure that is near chance (:attr:`Agreement.near_chance`)."""
        lines = [
            f"sensitivity estimate: split-half reliability of {name} is near chance "
            f"({value.describe()}); its selection is mostly noise - estimate on more batches "
            "or steps"
            for name, value in self.reliability.items()
            if value.near_chance
        ]
        if self.agreement is not None and self.agreement.near_chance:
            lines.append(
                "sensitivity estimate: the stable F agrees with the diagonal Fisher only at "
                f"chance level ({self.agreement.describe()}); check gamma and tau"
            )
        if self.domain_term is not None:
            lines.extend(self.domain_term.warnings())
        return lines

    def describe(self) -> list[str]:
        """Human-readable lines, e.g. for a report."""
        lines = [
            f"split-half reliability of {name}: {value.describe()}"
            for name, value in self.reliability.items()
        ]
        if not self.reliability:
            lines.append("split-half reliability: not measured (one estimation batch)")
        if self.agreement is not None:
            lines.append(
                f"stable F vs diagonal Fisher on the same batches: {self.agreement.describe()}"
            )
        if self.domain_term is not None:
            lines.append(f"domain term: {self.domain_term.describe()}")
        if self.hyper:
            lines.append(
                "hyper-parameters: " + ", ".join(f"{k} {v:.3g}" for k, v in self.hyper.items())
            )
        return lines

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (:meth:`from_dict` reads it back)."""
        return {
            "estimator": self.estimator,
            "reliability": {k: v.to_dict() for k, v in self.reliability.items()},
            "agreement": None if self.agreement is None else self.agreement.to_dict(),
            "hyper": dict(self.hyper),
            "domain_term": None if self.domain_term is None else asdict(self.domain_term),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EstimateQuality:
        """Inverse of :meth:`to_dict`."""

        def agreement(item: Mapping[str, Any]) -> Agreement:
            return Agreement(
                float(item["spearman"]),
                float(item["overlap"]),
                int(item["count"]),
                int(item["elements"]),
            )

        raw = data.get("agreement")
        reliability = data["reliability"]
        hyper = data.get("hyper", {})
        term = data.get("domain_term")
        return cls(
            {k: agreement(reliability[k]) for k in sorted(reliability, key=_rank(SCORE_ORDER))},
            None if raw is None else agreement(raw),
            str(data["estimator"]),
            {k: float(hyper[k]) for k in sorted(hyper, key=_rank(HYPER_ORDER))},
            None
            if term is None
            else DomainTerm(
                str(term["combine"]),
                float(term["coef"]),
                float(term["overlap_f"]),
                float(term["overlap_df"]),
                float(term["spearman_f_df"]),
                int(term["count"]),
                int(term["elements"]),
            ),
        )


SCORE_ORDER = ("F", "dF", "DRF")
HYPER_ORDER = ("gamma", "tau_min", "tau_max", "floor_min", "floor_max", "floor")


def _rank(order: Sequence[str]) -> Callable[[str], tuple[int, str]]:
    """Sort key: the names of ``order`` first, in that order, then the rest alphabetically
    (JSON written with sorted keys reads back in the order it was made in)."""
    return lambda name: (order.index(name) if name in order else len(order), name)
