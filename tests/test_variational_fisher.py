"""The variational (stable) Fisher estimator of method.md §6 (paper Eqs. 10–15)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from torch.distributions import Normal, kl_divergence

from conftest import MODEL_FACTORIES
from fishertune.sensitivity import (
    FeaturePerturbation,
    gaussian_kl,
    stable_dr_fim,
    variational_fisher,
    variational_precision,
)


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


def test_kl_matches_torch_distributions() -> None:
    mean, prior = torch.randn(10), torch.randn(10)
    log_var = torch.randn(10)
    tau = 0.7
    want = kl_divergence(
        Normal(mean, (0.5 * log_var).exp()), Normal(prior, torch.full((10,), tau))
    ).sum()
    torch.testing.assert_close(gaussian_kl(mean, log_var, prior, tau), want)


def test_quadratic_curvatures_are_recovered() -> None:
    """Curvatures over three decades come back within 5% (median) and 25% (worst element)."""
    h = torch.logspace(-2, 1, 60)
    model = _Quadratic(h)

    def run(estimator: Callable[..., dict[str, Tensor]]) -> Tensor:
        return estimator(
            model,
            _QUAD_BATCHES,
            gamma=1e-2,
            tau=1.0,
            steps=2000,
            generator=torch.Generator().manual_seed(0),
            loss_fn=_quadratic_loss,
        )["theta"]

    estimate = run(variational_fisher)
    relative = (estimate / h - 1).abs()
    assert float(relative.median()) < 0.05
    assert float(relative.max()) < 0.25
    # The precision is the posterior's: Λ = h/γ + τ⁻².
    torch.testing.assert_close(1e-2 * (run(variational_precision) - 1.0), estimate)


def test_prior_distance_does_not_change_the_optimum() -> None:
    """(θ̂ − θ_pt)² enters the KL but not its derivative in v."""
    h = torch.tensor([0.1, 1.0, 5.0])
    model = _Quadratic(h)
    kwargs = {
        "gamma": 1e-2,
        "tau": 1.0,
        "steps": 300,
        "loss_fn": _quadratic_loss,
    }
    near = variational_fisher(
        model, _QUAD_BATCHES, generator=torch.Generator().manual_seed(1), **kwargs
    )
    far = variational_fisher(
        model,
        _QUAD_BATCHES,
        prior={"theta": torch.full((3,), 10.0)},
        generator=torch.Generator().manual_seed(1),
        **kwargs,
    )
    torch.testing.assert_close(near["theta"], far["theta"])
    # ... while the reported objective (Eq. 11) moves by γ · ½ Σ (θ̂ − θ_pt)² / τ² exactly.
    seen: dict[str, list[float]] = {"near": [], "far": []}
    for label, prior in (("near", None), ("far", {"theta": torch.full((3,), 10.0)})):
        variational_fisher(
            model,
            _QUAD_BATCHES,
            prior=prior,
            generator=torch.Generator().manual_seed(1),
            callback=lambda step, value, log=seen[label]: log.append(value),
            **kwargs,
        )
    assert len(seen["near"]) == 300
    shift = 1e-2 * 0.5 * 3 * 100.0
    assert seen["far"][0] - seen["near"][0] == pytest.approx(shift, rel=1e-5)


def test_model_is_left_untouched_and_estimates_are_finite() -> None:
    model, batches = MODEL_FACTORIES["vit"]()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = {n: p for n, p in model.named_parameters() if "qkv" in n or "fc1" in n}
    perturbation = FeaturePerturbation(
        model.backbone.blocks[0], generator=torch.Generator().manual_seed(0)
    )
    for labels in ("given", "sampled"):
        estimate = variational_fisher(
            model,
            batches,
            params=params,
            gamma=1e-3,
            tau=0.1,
            steps=4,
            labels=labels,
            perturbation=perturbation,
            generator=torch.Generator().manual_seed(0),
        )
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
    clean = variational_precision(
        model, batches, generator=torch.Generator().manual_seed(0), **kwargs
    )
    perturbation = FeaturePerturbation(model.stem, generator=torch.Generator().manual_seed(1))
    shifted = variational_precision(
        model,
        batches,
        perturbation=perturbation,
        generator=torch.Generator().manual_seed(0),
        **kwargs,
    )
    score = stable_dr_fim(
        clean, shifted, gamma=1e-3, tau=0.1, coef=perturbation.coef, variant="DRF"
    )["head.weight"]
    task_only = stable_dr_fim(clean, shifted, gamma=1e-3, tau=0.1, coef=1.0, variant="F")
    assert bool((score >= task_only["head.weight"]).all())
    assert not torch.equal(clean["head.weight"], shifted["head.weight"])


def test_bad_arguments() -> None:
    model = _Quadratic(torch.ones(2))
    with pytest.raises(ValueError, match="gamma must be > 0"):
        variational_fisher(model, _QUAD_BATCHES, gamma=0.0, tau=1.0, steps=1)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        variational_fisher(model, _QUAD_BATCHES, gamma=1.0, tau=1.0, steps=0)
    with pytest.raises(ValueError, match="diagonal-Fisher mode"):
        variational_fisher(model, _QUAD_BATCHES, gamma=1.0, tau=1.0, steps=1, labels="batch")
    with pytest.raises(ValueError, match="prior has no entry"):
        variational_fisher(
            model,
            _QUAD_BATCHES,
            gamma=1.0,
            tau=1.0,
            steps=1,
            prior={"other": torch.ones(2)},
            loss_fn=_quadratic_loss,
        )
    with pytest.raises(ValueError, match="batches is empty"):
        variational_fisher(model, [], gamma=1.0, tau=1.0, steps=1, loss_fn=_quadratic_loss)
