"""Domain-Related Fisher information (paper Eqs. 5, 7 and 15; method.md §5–§6)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

VARIANTS = ("F", "dF", "DRF")


def shift_coefficient(scale_mu: float, scale_sigma: float) -> float:
    """c = exp(−(s_μ + s_σ)) from the perturbation scales (method.md §5).

    The paper writes e^{−(ε_μ+ε_σ)} with the sampled noise; a random coefficient cannot serve a
    ranking, so the scales of the noise are used: a larger simulated shift weighs ΔF less.
    """
    return math.exp(-(scale_mu + scale_sigma))


def _check(f_clean: Mapping[str, Tensor], f_shifted: Mapping[str, Tensor], variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if set(f_clean) != set(f_shifted):
        missing = sorted(set(f_clean) ^ set(f_shifted))
        raise ValueError(f"clean and shifted estimates cover different parameters: {missing}")
    for key, value in f_clean.items():
        if value.shape != f_shifted[key].shape:
            raise ValueError(
                f"shape mismatch for {key!r}: {tuple(value.shape)} vs {tuple(f_shifted[key].shape)}"
            )


def dr_fim(
    f_clean: Mapping[str, Tensor],
    f_shifted: Mapping[str, Tensor],
    *,
    coef: float,
    eps: float = 1e-8,
    variant: str = "DRF",
) -> dict[str, Tensor]:
    """Combine the source Fisher F and the Fisher F' under a simulated shift (Eqs. 5, 7).

    ΔF = |F − F'| / (min(F, F') + ε) and DRF = F + c · ΔF. ``variant`` picks the score of the
    ablations (paper Table 4): ``"F"`` (task-only Fisher), ``"dF"`` (ΔF) or ``"DRF"``.
    """
    _check(f_clean, f_shifted, variant)
    out = {}
    for key, f in f_clean.items():
        if variant == "F":
            out[key] = f.clone()
            continue
        g = f_shifted[key]
        delta = (f - g).abs() / (torch.minimum(f, g) + eps)
        out[key] = delta if variant == "dF" else f + coef * delta
    return out


def stable_dr_fim(
    lam_clean: Mapping[str, Tensor],
    lam_shifted: Mapping[str, Tensor],
    *,
    gamma: float,
    tau: float | Mapping[str, float],
    coef: float,
    eps: float = 1e-8,
    variant: str = "DRF",
) -> dict[str, Tensor]:
    """Stable DR-FIM from variational precisions Λ_x (clean) and Λ_x' (shifted), Eq. 15.

    DRF = γ · (Λ_x − τ⁻² + c · |Λ_x − Λ_x'| / (min(Λ_x, Λ_x') + ε/γ)). ``"F"`` returns
    γ(Λ_x − τ⁻²) (Eq. 14) and ``"dF"`` the γ-scaled shift term alone. ``tau`` is one number or
    one per key (the derived τ of :func:`~fishertune.sensitivity.variational.fit_variational`).
    In units of the Fisher the shift term is |F − F'| / (min(F, F') + γ/τ² + ε): the floor γ/τ²
    damps the relative shift of elements whose Fisher lies below it.
    """
    _check(lam_clean, lam_shifted, variant)
    out = {}
    for key, lam in lam_clean.items():
        fisher = lam - (tau[key] if isinstance(tau, Mapping) else tau) ** -2
        if variant == "F":
            out[key] = gamma * fisher
            continue
        other = lam_shifted[key]
        delta = (lam - other).abs() / (torch.minimum(lam, other) + eps / gamma)
        out[key] = gamma * (delta if variant == "dF" else fisher + coef * delta)
    return out
