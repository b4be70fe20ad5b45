"""The variational (stable) Fisher estimator of method.md §6 (paper Eqs. 10–15)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.distributions import Normal, kl_divergence

from conftest import MODEL_FACTORIES
from fishertune.sensitivity import (
    FeaturePerturbation,
    fit_variational,
    merge_fits,
    prior_scales,
    score_agreement,
    stable_dr_fim,
)
from reference import looped_fisher


class _Quadratic(nn.Module):
    """Loss ½ Σ h θ², whatever the input; its Hessian (and Fisher) is diag(h)."""

    def __init__(self, h: Tensor) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.zeros_like(h))
        self.register_buffer("h", h)

    def forward(self, _: Tensor) -> Tensor:
        return 0.5 * (self.h * self.theta.square()).sum()


def _quadratic_loss(outputs: Tensor, targets: Tensor) -> Tensor:
    return outputs.expand(targets.shape[0])


_QUAD_BATCHES = [(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long))]


def test_the_precision_fixed_point_minimises_the_objective_of_eq_11() -> None:
    """Λ = h/γ + τ⁻² (what :func:`fit_variational` converges to, checked below) is where
    E_q[½ Σ h θ²] + γ KL(q ‖ N(θ_pt, τ²)) is stationary in the variance v = 1/Λ: the KL from
    torch.distributions, the gradient by autograd (Eqs. 11 and 13)."""
    h = torch.logspace(-2, 1, 10, dtype=torch.float64)
    mean, prior = torch.randn(10, dtype=torch.float64), torch.randn(10, dtype=torch.float64)
    gamma, tau = 1e-2, 0.7
    variance = (1 / (h / gamma + tau**-2)).requires_grad_(True)
    expected_loss = 0.5 * (h * (mean.square() + variance)).sum()
    kl = kl_divergence(Normal(mean, variance.sqrt()), Normal(prior, torch.full((10,), tau)))
    (grad,) = torch.autograd.grad(expected_loss + gamma * kl.sum(), variance)
    torch.testing.assert_close(grad, torch.zeros_like(grad), atol=1e-9, rtol=0)


def test_quadratic_curvatures_are_recovered() -> None:
    """Eq. 11 without Eq. 12's substitution (``curvature="hessian"``): curvatures over three
    decades come back within 5% (median) and 25% (worst element), and Λ = h/γ + τ⁻²."""
    h = torch.logspace(-2, 1, 60)
    model = _Quadratic(h)
    fit = fit_variational(
        model,
        _QUAD_BATCHES,
        gamma=1e-2,
        tau=1.0,
        steps=2000,
        curvature="hessian",
        generator=torch.Generator().manual_seed(0),
        loss_fn=_quadratic_loss,
    )
    estimate = fit.fisher()["theta"]
    relative = (estimate / h - 1).abs()
    assert float(relative.median()) < 0.05
    assert float(relative.max()) < 0.25
    torch.testing.assert_close(1e-2 * (fit.precision["theta"] - 1.0), estimate)


def _softmax_regression() -> tuple[nn.Module, list[tuple[Tensor, Tensor]]]:
    torch.manual_seed(3)
    model = nn.Linear(8, 4)
    scales = torch.logspace(-1, 1, 8)  # features over two decades: a wide range of Fisher
    data = [(torch.randn(16, 8) * scales, torch.randint(0, 4, (16,))) for _ in range(12)]
    return model, data


def _exact_softmax_fisher(model: nn.Linear, data: list[tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
    """Closed form: ∂ℓ_i/∂W = (p_i − e_{y_i}) x_iᵀ and ∂ℓ_i/∂b = p_i − e_{y_i}, squared, mean."""
    x = torch.cat([a for a, _ in data]).double()
    y = torch.cat([b for _, b in data])
    with torch.no_grad():
        p = torch.softmax(x @ model.weight.double().T + model.bias.double(), dim=1)
    residual = p - torch.nn.functional.one_hot(y, 4).double()
    weight = torch.einsum("nk,nd->nkd", residual, x).square().mean(0)
    return {"weight": weight.float(), "bias": residual.square().mean(0).float()}


def test_default_estimate_ranks_like_the_exact_fisher_of_softmax_regression() -> None:
    """At its default γ, τ, curvature and floor, one pass over the data (one step per batch)
    ranks the elements as the closed-form per-sample Fisher does."""
    model, data = _softmax_regression()
    estimate = fit_variational(
        model, data, steps=len(data), generator=torch.Generator().manual_seed(0)
    ).fisher()
    assert (
        score_agreement(estimate, _exact_softmax_fisher(model, data), fraction=0.1).spearman > 0.9
    )


def test_default_estimate_ranks_like_the_brute_force_fisher_of_an_mlp() -> None:
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 5))
    data = [(torch.randn(8, 6) * 2, torch.randint(0, 5, (8,))) for _ in range(10)]
    params = dict(model.named_parameters())
    exact = looped_fisher(model, data, params)
    estimate = fit_variational(
        model, data, steps=len(data), generator=torch.Generator().manual_seed(0)
    ).fisher()
    agreement = score_agreement(estimate, exact, fraction=0.1)
    assert agreement.spearman > 0.9
    assert agreement.overlap > 0.6


def test_tau_and_gamma_are_derived_from_the_prior_and_the_first_step() -> None:
    model, data = _softmax_regression()
    prior = {"weight": torch.full((4, 8), 0.5), "bias": torch.zeros(4)}
    fit = fit_variational(
        model, data, steps=1, prior=prior, generator=torch.Generator().manual_seed(0)
    )
    # τ = 0.1 × rms of the prior tensor; an all-zero tensor takes the rms over all tensors.
    overall = math.sqrt(0.25 * 32 / 36)
    assert fit.tau == pytest.approx({"weight": 0.05, "bias": 0.1 * overall})
    assert prior_scales(prior, 0.2)["weight"] == pytest.approx(0.1)
    # One step samples the prior, so F̂ is that step's curvature ĥ_0, and γ puts the floor
    # γ/τ² at its median: γ = median over elements of ĥ_0 · τ².
    first = fit.fisher()
    scaled = torch.cat([(first[k] * fit.tau[k] ** 2).flatten() for k in first])
    assert fit.gamma == pytest.approx(float(scaled.quantile(0.5)), rel=1e-5)
    assert fit.floors()["weight"] == pytest.approx(fit.gamma / 0.05**2)
    # Explicit values are kept.
    given = fit_variational(model, data, steps=1, gamma=1e-3, tau={"weight": 0.2, "bias": 0.3})
    assert (given.gamma, given.tau) == (1e-3, {"weight": 0.2, "bias": 0.3})


def test_halves_merged_equal_their_step_weighted_mean() -> None:
    model, data = _softmax_regression()
    first = fit_variational(model, data[:6], steps=4, generator=torch.Generator().manual_seed(0))
    second = fit_variational(
        model,
        data[6:],
        steps=2,
        gamma=first.gamma,
        tau=first.tau,
        generator=torch.Generator().manual_seed(1),
    )
    merged = merge_fits([first, second]).fisher()
    for key in merged:
        want = (4 * first.fisher()[key] + 2 * second.fisher()[key]) / 6
        torch.testing.assert_close(merged[key], want)
    other = fit_variational(model, data, steps=1, gamma=1.0)
    with pytest.raises(ValueError, match="same gamma"):
        merge_fits([first, other])


def test_prior_distance_does_not_change_the_estimate() -> None:
    """With τ given, θ_pt enters the KL only through (θ̂ − θ_pt)², constant in v."""
    h = torch.tensor([0.1, 1.0, 5.0])
    model = _Quadratic(h)
    kwargs: dict[str, Any] = {
        "gamma": 1e-2,
        "tau": 1.0,
        "steps": 300,
        "curvature": "hessian",
        "loss_fn": _quadratic_loss,
    }
    near = fit_variational(
        model, _QUAD_BATCHES, generator=torch.Generator().manual_seed(1), **kwargs
    ).fisher()
    far = fit_variational(
        model,
        _QUAD_BATCHES,
        prior={"theta": torch.full((3,), 10.0)},
        generator=torch.Generator().manual_seed(1),
        **kwargs,
    ).fisher()
    torch.testing.assert_close(near["theta"], far["theta"])


def test_model_is_left_untouched_and_estimates_are_finite() -> None:
    model, batches = MODEL_FACTORIES["vit"]()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = {n: p for n, p in model.named_parameters() if "qkv" in n or "fc1" in n}
    perturbation = FeaturePerturbation(
        model.backbone.blocks[0], generator=torch.Generator().manual_seed(0)
    )
    for labels, curvature in (("given", "fisher"), ("sampled", "fisher"), ("given", "hessian")):
        estimate = fit_variational(
            model,
            batches,
            params=params,
            steps=4,
            labels=labels,
            curvature=curvature,
            perturbation=perturbation,
            generator=torch.Generator().manual_seed(0),
        ).fisher()
        assert set(estimate) == set(params)
        for key, value in estimate.items():
            assert value.shape == params[key].shape
            assert bool(torch.isfinite(value).all())
            assert bool((value >= 0).all())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())


def test_stable_dr_fim_from_clean_and_shifted_precisions() -> None:
    model, batches = MODEL_FACTORIES["conv"]()
    params = {"head.weight": model.head.weight}
    kwargs = {"params": params, "gamma": 1e-3, "tau": 0.1, "steps": 20}
    clean = fit_variational(
        model, batches, generator=torch.Generator().manual_seed(0), **kwargs
    ).precision
    perturbation = FeaturePerturbation(model.stem, generator=torch.Generator().manual_seed(1))
    shifted = fit_variational(
        model,
        batches,
        perturbation=perturbation,
        generator=torch.Generator().manual_seed(0),
        **kwargs,
    ).precision
    score = stable_dr_fim(
        clean, shifted, gamma=1e-3, tau=0.1, coef=perturbation.coef, combine="paper"
    )["head.weight"]
    task_only = stable_dr_fim(clean, shifted, gamma=1e-3, tau=0.1, coef=1.0, variant="F")
    assert bool((score >= task_only["head.weight"]).all())
    assert not torch.equal(clean["head.weight"], shifted["head.weight"])


def test_bad_arguments() -> None:
    model = _Quadratic(torch.ones(2))
    with pytest.raises(ValueError, match="curvature must be one of"):
        fit_variational(model, _QUAD_BATCHES, steps=1, curvature="exact")
    with pytest.raises(ValueError, match="floor_quantile must lie"):
        fit_variational(model, _QUAD_BATCHES, steps=1, floor_quantile=1.0)
    with pytest.raises(ValueError, match="tau has no entry"):
        fit_variational(model, _QUAD_BATCHES, steps=1, tau={"other": 1.0})
    with pytest.raises(ValueError, match="tau_scale must be > 0"):
        fit_variational(model, _QUAD_BATCHES, steps=1, tau_scale=0.0, loss_fn=_quadratic_loss)
    with pytest.raises(ValueError, match="gamma must be > 0"):
        fit_variational(model, _QUAD_BATCHES, gamma=0.0, tau=1.0, steps=1)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        fit_variational(model, _QUAD_BATCHES, gamma=1.0, tau=1.0, steps=0)
    with pytest.raises(ValueError, match="diagonal-Fisher mode"):
        fit_variational(model, _QUAD_BATCHES, gamma=1.0, tau=1.0, steps=1, labels="batch")
    with pytest.raises(ValueError, match="prior has no entry"):
        fit_variational(
            model,
            _QUAD_BATCHES,
            gamma=1.0,
            tau=1.0,
            steps=1,
            prior={"other": torch.ones(2)},
            loss_fn=_quadratic_loss,
        )
    with pytest.raises(ValueError, match="batches is empty"):
        fit_variational(model, [], gamma=1.0, tau=1.0, steps=1, loss_fn=_quadratic_loss)


def test_a_step_size_forgets_the_first_samples() -> None:
    """``lr`` = 1 keeps only the last curvature sample: h ε_K² on the quadratic, with ε_K the
    generator's K-th draw; None keeps their mean."""
    h = torch.tensor([0.5, 2.0, 8.0])
    model = _Quadratic(h)
    kwargs: dict[str, Any] = {
        "gamma": 1e-2,
        "tau": 1.0,
        "steps": 4,
        "curvature": "hessian",
        "loss_fn": _quadratic_loss,
    }
    last = fit_variational(
        model, _QUAD_BATCHES, lr=1.0, generator=torch.Generator().manual_seed(2), **kwargs
    ).fisher()["theta"]
    mean = fit_variational(
        model, _QUAD_BATCHES, generator=torch.Generator().manual_seed(2), **kwargs
    ).fisher()["theta"]
    generator = torch.Generator().manual_seed(2)
    draws = [torch.empty(3).normal_(generator=generator) for _ in range(4)]
    torch.testing.assert_close(last, h * draws[-1].square())
    torch.testing.assert_close(mean, h * torch.stack(draws).square().mean(0))
    with pytest.raises(ValueError, match="lr must lie in"):
        fit_variational(model, _QUAD_BATCHES, lr=0.0, **kwargs)
