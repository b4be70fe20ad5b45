"""DR-FIM combinations (method.md §5) and their stable form (paper Eq. 15)."""

from __future__ import annotations

import math

import pytest
import torch

from fishertune.sensitivity import dr_fim, shift_coefficient, stable_dr_fim


def test_variants_follow_the_formulas() -> None:
    f = {"w": torch.tensor([1.0, 2.0, 0.0, 4.0])}
    g = {"w": torch.tensor([3.0, 2.0, 1.0, 1.0])}
    coef = shift_coefficient(0.5, 0.5)
    assert coef == pytest.approx(math.exp(-1.0))
    delta = torch.tensor([2.0 / 1.0, 0.0, 1.0 / 1e-8, 3.0 / 1.0])
    assert torch.equal(dr_fim(f, g, coef=coef, variant="F")["w"], f["w"])
    torch.testing.assert_close(dr_fim(f, g, coef=coef, variant="dF")["w"], delta)
    torch.testing.assert_close(dr_fim(f, g, coef=coef)["w"], f["w"] + coef * delta)


def test_stable_form_matches_eq_15() -> None:
    gamma, tau, coef, eps = 0.1, 0.5, 0.3, 1e-8
    lam = {"w": torch.tensor([5.0, 9.0, 4.0])}
    lam_shift = {"w": torch.tensor([6.0, 9.0, 20.0])}
    prior = tau**-2
    want_f = gamma * (lam["w"] - prior)
    want_d = (lam["w"] - lam_shift["w"]).abs() / (
        torch.minimum(lam["w"], lam_shift["w"]) + eps / gamma
    )
    kwargs = {"gamma": gamma, "tau": tau, "coef": coef, "eps": eps}
    torch.testing.assert_close(stable_dr_fim(lam, lam_shift, variant="F", **kwargs)["w"], want_f)
    torch.testing.assert_close(
        stable_dr_fim(lam, lam_shift, variant="dF", **kwargs)["w"], gamma * want_d
    )
    torch.testing.assert_close(
        stable_dr_fim(lam, lam_shift, **kwargs)["w"], want_f + gamma * coef * want_d
    )


def test_mismatches_are_reported() -> None:
    a = {"w": torch.ones(3)}
    with pytest.raises(ValueError, match="different parameters"):
        dr_fim(a, {"v": torch.ones(3)}, coef=1.0)
    with pytest.raises(ValueError, match="shape mismatch for 'w'"):
        dr_fim(a, {"w": torch.ones(4)}, coef=1.0)
    with pytest.raises(ValueError, match="variant must be one of"):
        dr_fim(a, a, coef=1.0, variant="DR")
