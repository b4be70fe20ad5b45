"""Domain-Related Fisher information (paper Eqs. 5, 7 and 15; method.md §5–§6).

The paper adds the source Fisher F (a squared gradient, whose scale depends on the loss, the
model and the data) to a dimensionless relative shift ΔF, "scaled appropriately to balance with
F", and prints two forms that do not balance them: on the demo backbone Eq. 7 ranks by ΔF alone
(F ≈ 1e-6) and Eq. 15 by F alone (its shift term is multiplied by γ ≈ 1e-10). method.md §5
(decided 2026-12-03) therefore combines scale-free terms by default:

- the relative shift with a resolution floor φ, ΔF̃ = |F − F'| / (min(F, F') + φ); φ = γ/τ² for
  the stable estimate (what Eq. 15 gives in units of F, §6), the median of F over the candidate
  elements for the diagonal one (elements far below it carry no measurable Fisher);
- ``combine="normalised"`` (default): DRF = F / mean(F) + c · ΔF̃ / mean(ΔF̃);
- ``combine="rank"``: DRF = q(F) + c · q(ΔF̃), q the element's quantile among the candidates;
- ``combine="paper"``: Eq. 7 (diagonal) and Eq. 15 (stable) as printed, kept for the study.

Means and quantiles run over the candidate elements (every element when no candidates are
given), so multiplying F and F' by a constant changes no ranking of the first two modes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from fishertune.selection import Selection

VARIANTS = ("F", "dF", "DRF")
"""The scores of the paper's Table 4: task-only Fisher, the domain term, their combination."""

COMBINES = ("normalised", "rank", "paper")
"""How F and the domain term make the DRF (method.md §5); ``"normalised"`` is the default."""

PAPER_EPS = 1e-8
"""ε of the printed Eqs. 7 and 15 (``combine="paper"``)."""

Floor = float | Mapping[str, float]
"""The resolution floor φ: one number, or one per tensor (the stable estimate's γ/τ_t²)."""


def shift_coefficient(scale_mu: float, scale_sigma: float) -> float:
    """c = exp(−(s_μ + s_σ)) from the perturbation scales (method.md §5).

    The paper writes e^{−(ε_μ+ε_σ)} with the sampled noise; a random coefficient cannot serve a
    ranking, so the scales of the noise are used: a larger simulated shift weighs ΔF less.
    """
    return math.exp(-(scale_mu + scale_sigma))


def _check(
    f_clean: Mapping[str, Tensor], f_shifted: Mapping[str, Tensor], variant: str, combine: str
) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if combine not in COMBINES:
        raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")
    if set(f_clean) != set(f_shifted):
        missing = sorted(set(f_clean) ^ set(f_shifted))
        raise ValueError(f"clean and shifted estimates cover different parameters: {missing}")
    for key, value in f_clean.items():
        if value.shape != f_shifted[key].shape:
            raise ValueError(
                f"shape mismatch for {key!r}: {tuple(value.shape)} vs {tuple(f_shifted[key].shape)}"
            )


def _floor_of(floor: Floor, key: str) -> float:
    return float(floor[key]) if isinstance(floor, Mapping) else float(floor)


def _candidate_values(scores: Mapping[str, Tensor], candidates: Selection | None) -> Tensor:
    """The candidate elements' values of every tensor, concatenated (float64, on the CPU)."""
    parts = []
    for key, value in scores.items():
        flat = value.detach().reshape(-1)
        if candidates is not None:
            flat = flat[candidates[key].to(flat.device).long()]
        parts.append(flat.double().cpu())
    values = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)
    if values.numel() == 0:
        raise ValueError("no candidate element to combine scores over")
    return values


def median_floor(fisher: Mapping[str, Tensor], candidates: Selection | None = None) -> float:
    """φ of the diagonal estimate: the median of F over the candidate elements (method.md §5;
    the lower median when their number is even)."""
    return float(_candidate_values(fisher, candidates).median())


def relative_shift(
    f_clean: Mapping[str, Tensor], f_shifted: Mapping[str, Tensor], floor: Floor
) -> dict[str, Tensor]:
    """ΔF̃ = |F − F'| / (min(F, F') + φ) per element (method.md §5)."""
    out = {}
    for key, f in f_clean.items():
        g = f_shifted[key]
        out[key] = (f - g).abs() / (torch.minimum(f, g) + _floor_of(floor, key))
    return out


def _normalised(scores: Mapping[str, Tensor], candidates: Selection | None) -> dict[str, Tensor]:
    """``scores`` / their mean over the candidates; a term whose mean is 0 (no element carries
    any signal) contributes 0."""
    mean = float(_candidate_values(scores, candidates).mean())
    if not mean > 0:
        return {key: torch.zeros_like(value) for key, value in scores.items()}
    return {key: value / mean for key, value in scores.items()}


def quantiles(
    scores: Mapping[str, Tensor], candidates: Selection | None = None
) -> dict[str, Tensor]:
    """Each element's quantile among the candidate elements: its mean rank (ties share the
    mean of their ranks, 1-based) over the number of candidates, in (0, 1].

    Costs one sorted float64 copy of the candidates' values (8 bytes per candidate element).
    Elements that are not candidates get the quantile their value would have among them.
    """
    ordered = _candidate_values(scores, candidates).sort().values
    total = ordered.numel()
    out = {}
    for key, value in scores.items():
        flat = value.detach().reshape(-1).double().cpu()
        below = torch.searchsorted(ordered, flat, right=False)
        at_or_below = torch.searchsorted(ordered, flat, right=True)
        mean_rank = (below + 1 + at_or_below).double() / 2
        out[key] = (mean_rank / total).reshape(value.shape).to(value.device, value.dtype)
    return out


def combine_terms(
    fisher: Mapping[str, Tensor],
    shift: Mapping[str, Tensor],
    *,
    coef: float,
    combine: str,
    candidates: Selection | None = None,
) -> dict[str, Tensor]:
    """DRF from F and ΔF̃ by a scale-free ``combine`` (``"normalised"`` or ``"rank"``, §5)."""
    if combine == "normalised":
        a, b = _normalised(fisher, candidates), _normalised(shift, candidates)
    elif combine == "rank":
        a, b = quantiles(fisher, candidates), quantiles(shift, candidates)
    else:
        raise ValueError(f"combine_terms: combine must be 'normalised' or 'rank', got {combine!r}")
    return {key: a[key] + coef * b[key] for key in fisher}


def dr_fim(
    f_clean: Mapping[str, Tensor],
    f_shifted: Mapping[str, Tensor],
    *,
    coef: float,
    variant: str = "DRF",
    combine: str = "normalised",
    floor: Floor | None = None,
    candidates: Selection | None = None,
    eps: float = PAPER_EPS,
) -> dict[str, Tensor]:
    """The score of ``variant`` from the source Fisher F and the Fisher F' under a simulated
    shift (paper Eqs. 5, 7; method.md §5), for the diagonal estimate.

    ``"F"`` is F. With ``combine`` ``"normalised"`` or ``"rank"``, ``"dF"`` is ΔF̃ with the floor
    φ (``floor``; None: :func:`median_floor` of F over ``candidates``) and ``"DRF"`` their
    scale-free combination (:func:`combine_terms`). With ``"paper"``, Eq. 7 as printed:
    ``"dF"`` = |F − F'| / (min(F, F') + ε) and ``"DRF"`` = F + c · that.
    """
    _check(f_clean, f_shifted, variant, combine)
    if variant == "F":
        return {key: f.clone() for key, f in f_clean.items()}
    if combine == "paper":
        shift = relative_shift(f_clean, f_shifted, eps)
        if variant == "dF":
            return shift
        return {key: f + coef * shift[key] for key, f in f_clean.items()}
    phi = median_floor(f_clean, candidates) if floor is None else floor
    shift = relative_shift(f_clean, f_shifted, phi)
    if variant == "dF":
        return shift
    return combine_terms(f_clean, shift, coef=coef, combine=combine, candidates=candidates)


def stable_floor(
    gamma: float, tau: float | Mapping[str, float], keys: list[str]
) -> dict[str, float]:
    """φ of the stable estimate, γ/τ² per tensor (τ one number or one per key; §6)."""
    return {k: gamma / (tau[k] if isinstance(tau, Mapping) else tau) ** 2 for k in keys}


def stable_dr_fim(
    lam_clean: Mapping[str, Tensor],
    lam_shifted: Mapping[str, Tensor],
    *,
    gamma: float,
    tau: float | Mapping[str, float],
    coef: float,
    variant: str = "DRF",
    combine: str = "normalised",
    candidates: Selection | None = None,
    eps: float = PAPER_EPS,
) -> dict[str, Tensor]:
    """The score of ``variant`` from variational precisions Λ_x (clean) and Λ_x' (shifted),
    paper Eqs. 14–15 (method.md §6).

    F̂ = γ (Λ_x − τ⁻²) (Eq. 14; ``"F"``), likewise F̂' from Λ_x'. With ``combine``
    ``"normalised"`` or ``"rank"``, ``"dF"`` is ΔF̃ = |F̂ − F̂'| / (min(F̂, F̂') + γ/τ²) (the floor
    Eq. 15 gives in units of F; equal to |Λ_x − Λ_x'| / min(Λ_x, Λ_x')) and ``"DRF"`` the
    scale-free combination of F̂ and ΔF̃ (:func:`combine_terms`). With ``"paper"``, Eq. 15 as
    printed: DRF = γ · (Λ_x − τ⁻² + c · |Λ_x − Λ_x'| / (min(Λ_x, Λ_x') + ε/γ)), ``"dF"`` its
    γ-scaled shift term alone. ``tau`` is one number or one per key (the derived τ of
    :func:`~fishertune.sensitivity.variational.fit_variational`).
    """
    _check(lam_clean, lam_shifted, variant, combine)
    floor = stable_floor(gamma, tau, list(lam_clean))
    fisher = {k: gamma * lam - floor[k] for k, lam in lam_clean.items()}
    if variant == "F":
        return fisher
    if combine == "paper":
        shift = {
            key: gamma
            * (lam - lam_shifted[key]).abs()
            / (torch.minimum(lam, lam_shifted[key]) + eps / gamma)
            for key, lam in lam_clean.items()
        }
        if variant == "dF":
            return shift
        return {key: f + coef * shift[key] for key, f in fisher.items()}
    shifted = {k: gamma * lam - floor[k] for k, lam in lam_shifted.items()}
    return dr_fim(
        fisher,
        shifted,
        coef=coef,
        variant=variant,
        combine=combine,
        floor=floor,
        candidates=candidates,
    )
