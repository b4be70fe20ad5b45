"""FeaturePerturbation follows method.md §4 (paper Eq. 6)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from fishertune.sensitivity import FeaturePerturbation


class _Emit(nn.Module):
    """Returns a stored tensor, whatever its input: a hook target with known output."""

    def __init__(self, value: Tensor) -> None:
        super().__init__()
        self.value = value

    def forward(self, _: Tensor) -> Tensor:
        return self.value.clone()


def _stats(z: Tensor, dims: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    return z.mean(dim=dims), z.var(dim=dims, correction=0).sqrt()


@pytest.mark.parametrize(
    ("shape", "dims"),
    [((6, 10, 4), (1,)), ((6, 4, 3, 5), (2, 3)), ((6, 3, 5, 4), (1, 2))],
    ids=["tokens", "maps", "maps_channels_last"],
)
def test_perturbed_statistics_follow_the_formula(
    shape: tuple[int, ...], dims: tuple[int, ...]
) -> None:
    z = torch.randn(shape) * 3 + 1
    module = _Emit(z)
    perturbation = FeaturePerturbation(
        module,
        scale=0.7,
        generator=torch.Generator().manual_seed(0),
        eps=0.0,
        channels_last=dims == (1, 2),
    )
    with perturbation, perturbation.record_offsets() as offsets:
        out = module(torch.zeros(1))
    ((a, b),) = offsets
    mu, sigma = _stats(z, dims)
    new_mu, new_sigma = _stats(out, dims)
    torch.testing.assert_close(new_mu, mu + a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(new_sigma, sigma + b, rtol=1e-5, atol=1e-5)
    # The offsets are ε ⊙ Σ with Σ the unbiased std over the batch and ε ~ N(0, 0.7²).
    spread_mu, spread_sigma = mu.std(dim=0), sigma.std(dim=0)
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn((2, *mu.shape), generator=gen)
    torch.testing.assert_close(a, noise[0] * 0.7 * spread_mu)
    torch.testing.assert_close(b, noise[1] * 0.7 * spread_sigma)
    # Normalised content is kept: (z' − α)/β = (z − μ)/σ.
    expand = {
        (1,): (slice(None), None, slice(None)),
        (2, 3): (..., None, None),
        (1, 2): (slice(None), None, None, slice(None)),
    }[dims]
    torch.testing.assert_close(
        (out - (mu + a)[expand]) / (sigma + b)[expand],
        (z - mu[expand]) / sigma[expand],
        rtol=1e-4,
        atol=1e-4,
    )


def test_noise_scale_matches_the_shift_control_factor() -> None:
    z = torch.randn(64, 16, 128) * torch.rand(64, 1, 128) + torch.randn(64, 1, 128)
    module = _Emit(z)
    perturbation = FeaturePerturbation(module, scale=2.0, generator=torch.Generator())
    with perturbation, perturbation.record_offsets() as offsets:
        module(torch.zeros(1))
    mu, _ = _stats(z, (1,))
    ratio = offsets[0][0] / mu.std(dim=0)
    assert abs(float(ratio.std()) - 2.0) < 0.1
    assert perturbation.coef == pytest.approx(math.exp(-4.0))


def test_inactive_context_changes_nothing_and_hooks_are_removed() -> None:
    layer = nn.Linear(4, 4)
    x = torch.randn(3, 5, 4)
    before = layer(x)
    perturbation = FeaturePerturbation(layer, generator=torch.Generator().manual_seed(0))
    assert torch.equal(layer(x), before)
    with perturbation:
        assert perturbation.active
        assert not torch.allclose(layer(x), before)
    assert not perturbation.active
    assert torch.equal(layer(x), before)


def test_same_seed_same_perturbation_and_several_modules() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4))
    x = torch.randn(3, 5, 4)
    outs = []
    for _ in range(2):
        perturbation = FeaturePerturbation(
            [model[0], model[2]], generator=torch.Generator().manual_seed(5)
        )
        with perturbation, perturbation.record_offsets() as offsets:
            outs.append(model(x))
        assert len(offsets) == 2
    assert torch.equal(outs[0], outs[1])


def test_prefix_tokens_are_untouched() -> None:
    z = torch.randn(4, 6, 3)
    module = _Emit(z)
    perturbation = FeaturePerturbation(
        module, generator=torch.Generator().manual_seed(0), num_prefix_tokens=2
    )
    with perturbation:
        out = module(torch.zeros(1))
    assert torch.equal(out[:, :2], z[:, :2])
    assert not torch.allclose(out[:, 2:], z[:, 2:])


def test_replayed_offsets_reproduce_single_samples() -> None:
    layer = nn.Linear(4, 4)
    x = torch.randn(3, 5, 4)
    perturbation = FeaturePerturbation(layer, generator=torch.Generator().manual_seed(1))
    with perturbation:
        with perturbation.record_offsets() as offsets:
            batch = layer(x)
        for i in range(3):
            with perturbation.use_offsets([(a[i], b[i]) for a, b in offsets]):
                torch.testing.assert_close(layer(x[i : i + 1])[0], batch[i])


def test_clear_errors() -> None:
    layer = nn.Linear(4, 4)
    with FeaturePerturbation(layer), pytest.raises(ValueError, match="at least 2 samples"):
        layer(torch.randn(1, 5, 4))
    with FeaturePerturbation(layer), pytest.raises(TypeError, match=r"\(B, N, C\) token"):
        layer(torch.randn(3, 4))
    with pytest.raises(ValueError, match="at least one module"):
        FeaturePerturbation([])
    with pytest.raises(ValueError, match="scale must be >= 0"):
        FeaturePerturbation(layer, scale=-1.0)


def _dsu_reference(x: Tensor, noise: Tensor, eps: float) -> Tensor:
    """DSU's DistributionUncertainty forward (Li et al., ICLR 2022) on (B, C, H, W) maps with
    the noise given, written from the paper: statistics per sample and channel, their spread
    over the batch sqrt(var + eps) repeated per sample, β = μ + ε_μ·Σ_μ, γ = σ + ε_σ·Σ_σ,
    out = γ·(x − μ)/σ + β. Per-sample variance: the population one, this library's documented
    departure from DSU's unbiased estimate."""
    mean = x.mean(dim=(2, 3))
    std = (x.var(dim=(2, 3), correction=0) + eps).sqrt()
    spread_mean = (mean.var(dim=0, keepdim=True) + eps).sqrt().repeat(x.shape[0], 1)
    spread_std = (std.var(dim=0, keepdim=True) + eps).sqrt().repeat(x.shape[0], 1)
    beta = mean + noise[0] * spread_mean
    gamma = std + noise[1] * spread_std
    normed = (x - mean[..., None, None]) / std[..., None, None]
    return normed * gamma[..., None, None] + beta[..., None, None]


def test_equals_dsus_module_given_the_same_noise() -> None:
    x = torch.randn(5, 3, 4, 6) * 2 + 0.5
    module = _Emit(x)
    perturbation = FeaturePerturbation(
        module, scale=1.0, generator=torch.Generator().manual_seed(3), eps=1e-6
    )
    with perturbation:
        out = module(torch.zeros(1))
    noise = torch.randn((2, 5, 3), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(out, _dsu_reference(x, noise, 1e-6), rtol=1e-5, atol=1e-5)


def test_the_training_augmentation_perturbs_half_the_passes_and_none_in_eval_mode() -> None:
    x = torch.randn(4, 8, 6)
    module = _Emit(x)
    perturbation = FeaturePerturbation(
        module, generator=torch.Generator().manual_seed(0), probability=0.5, training_only=True
    )
    with perturbation:
        changed = [not torch.equal(module(torch.zeros(1)), x) for _ in range(400)]
        module.eval()
        assert all(torch.equal(module(torch.zeros(1)), x) for _ in range(20))
    assert 160 <= sum(changed) <= 240  # Binomial(400, 0.5): ± 4 standard deviations
    always = FeaturePerturbation(module, generator=torch.Generator().manual_seed(0))
    with always:  # the estimation stage's simulated domain: every call, in any mode
        assert not torch.equal(module(torch.zeros(1)), x)
    with pytest.raises(ValueError, match="probability must be in"):
        FeaturePerturbation(module, probability=1.5)
