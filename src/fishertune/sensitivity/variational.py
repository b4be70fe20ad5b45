"""Stable, variational estimation of the Fisher (paper Eqs. 10–14; method.md §6).

The fit. q(θ) = N(θ̂, diag(v)) around the current weights θ̂, prior p(θ) = N(θ_pt, τ² I) around
the pretrained ones (Eq. 10), and Eq. 11: minimise E_q[L(θ)] + γ · KL(q ‖ p) over v. Its
stationarity condition is exact (Bonnet/Price: ∂E_q[L]/∂v = ½ E_q[∂²L/∂θ²]):

    Λ = 1/v = E_q[∂²L/∂θ²] / γ + τ⁻²,

and with Eq. 12's Fisher in place of the Hessian, Λ = E_q[F(θ)] / γ + τ⁻², so that
F̂ = γ(Λ − τ⁻²) (Eq. 14) is the Fisher averaged over the posterior: the pretrained prior bounds
how far the weights are sampled, the posterior shrinks the samples where the loss is sensitive.

The optimiser. Stochastic variational inference (Hoffman et al. 2013, the paper's [20]) takes
natural-gradient steps Λ ← (1 − β_k) Λ + β_k (ĥ_k / γ + τ⁻²), with ĥ_k a one-sample estimate of
the curvature at reparameterised weights θ̂ + √v ⊙ ε drawn from the current q (the paper's
reparameterisation trick, [27]), and β_k = 1/(k + 1), which makes Λ − τ⁻² the running mean of
ĥ/γ and converges to the stationary point above. Two curvature samples:

- ``curvature="fisher"`` (default): ĥ = (1/B) Σ_i (∂ℓ_i/∂θ)², the per-sample squared gradients
  at the sampled weights: Eq. 12's Fisher (the variational online Gauss–Newton update). One
  forward and one (per-sample) backward per step. Steps come in antithetic pairs: every odd
  step samples θ̂ − √v ε with the ε of the step before (each sample still follows q, the odd
  part of the curvature's dependence on the weights cancels within a pair, and half the normal
  draws are saved).
- ``curvature="hessian"``: ĥ = ε ⊙ (∇L(θ̂ + √v ε) − ∇L(θ̂ − √v ε)) / (2√v), the antithetic
  reparameterisation estimate of E_q[∂²L/∂θ²], Eq. 11 without Eq. 12's substitution. Exact for a
  quadratic loss, but every weight is perturbed at once, so each sample carries the
  off-diagonal Hessian (Hutchinson's noise): on the demo backbone 30 exact samples still have
  half their diagonal entries negative and no rank agreement with the Fisher. Two forward and
  backward passes per step.

Why not Adam on ρ = ln v (the previous implementation): its one-sample gradient
½ ∇L(θ̂ + √v ε) ⊙ ε √v is dominated by the batch gradient, whose signal-to-noise ratio per step
is about √(γ · batch size) (0.03 at γ = 1e-4), and Adam's per-element steps of size ``lr`` need
hundreds of steps to move ρ by the log-decades separating the elements; 300 steps on the demo
backbone gave rank correlation 0.01 with a well-sampled Fisher.

The hyper-parameters, derived from the model and the data unless given:

- τ, per tensor: ``tau_scale`` (0.1) × the root mean square of the tensor's prior (pretrained)
  values, so that no sample moves a weight by more than a tenth of its tensor's typical size
  and the second-order expansion behind Eqs. 12–14 holds. A fixed τ = 1e-2 is the weights' own
  scale on the demo backbone and far below it on others.
- γ: chosen so that the resolution floor γ/τ² lies at the ``floor_quantile`` (0.5) quantile of
  the curvature measured at the first step, which samples the prior (v = τ², independent of
  γ): γ = quantile_n(ĥ_0,n · τ_n²). Elements above the floor get samples narrower than τ and
  the stable DR-FIM (Eq. 15) resolves their relative shift; elements below it stay at the
  prior, where Eq. 15's ΔF is damped instead of dividing noise by noise. At the median the
  floor lies far below the few percent of elements a budget selects. A fixed γ = 1e-4 with
  τ = 1e-2 put the floor at 1, five decades above the Fisher of single weights.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from fishertune.label_space import IGNORE_INDEX
from fishertune.process_group import world_size
from fishertune.progress import track
from fishertune.sensitivity._common import (
    LossFn,
    all_reduce_sum,
    check_labels,
    cycle,
    eval_mode,
    resolve_params,
    uses_model_loss,
)
from fishertune.sensitivity.model_inputs import ModelInputs, unpack_batch
from fishertune.sensitivity.per_sample import PerSampleGrads
from fishertune.sensitivity.perturbation import FeaturePerturbation

CURVATURES = ("fisher", "hessian")
TAU_SCALE = 0.1
"""Default τ of a tensor as a share of the root mean square of its prior values."""
FLOOR_QUANTILE = 0.5
"""Default quantile of the first step's curvature at which γ puts the floor γ/τ²."""
_QUANTILE_SAMPLE = 2**22
"""At most this many elements (an even stride over all tensors) enter γ's quantile."""


def check_fit_options(
    *, curvature: str, gamma: float | None, tau_scale: float, floor_quantile: float
) -> None:
    """The one range check of the stable estimator's options (a ValueError naming the option
    and what is allowed): :func:`fit_variational` runs it, and FisherTune's configuration when
    it loads."""
    if curvature not in CURVATURES:
        raise ValueError(f"curvature must be one of {CURVATURES}, got {curvature!r}")
    if gamma is not None and not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    if not tau_scale > 0:
        raise ValueError(f"tau_scale must be > 0, got {tau_scale}")
    if not 0.0 < floor_quantile < 1.0:
        raise ValueError(f"floor_quantile must lie in (0, 1), got {floor_quantile}")


def prior_scales(prior: Mapping[str, Tensor], scale: float = TAU_SCALE) -> dict[str, float]:
    """τ per tensor: ``scale`` × the root mean square of the tensor's prior values.

    A tensor that is all zeros (e.g. a zero-initialised bias) takes the root mean square over
    all tensors; if every tensor is zero, τ = ``scale``.
    """
    if not scale > 0:
        raise ValueError(f"tau_scale must be > 0, got {scale}")
    squares = {k: float(v.detach().double().square().sum()) for k, v in prior.items()}
    sizes = {k: max(v.numel(), 1) for k, v in prior.items()}
    overall = math.sqrt(sum(squares.values()) / max(sum(sizes.values()), 1)) or 1.0
    return {k: scale * (math.sqrt(squares[k] / sizes[k]) or overall) for k in prior}


@dataclass(frozen=True)
class VariationalFit:
    """The fitted posterior precision and the hyper-parameters it was fitted with.

    Attributes:
        precision: Λ = 1/v by key (float32, the parameters' shapes).
        gamma: γ of Eq. 11 (given, or derived from the first step).
        tau: τ of the prior by key.
        steps: natural-gradient steps taken.
        curvature: ``"fisher"`` or ``"hessian"`` (see the module docstring).
    """

    precision: dict[str, Tensor]
    gamma: float
    tau: dict[str, float]
    steps: int
    curvature: str

    def fisher(self) -> dict[str, Tensor]:
        """F̂ = γ(Λ − τ⁻²) (Eq. 14), clipped at 0 (a Fisher is non-negative)."""
        return {
            key: (self.gamma * (lam - self.tau[key] ** -2)).clamp_min(0.0)
            for key, lam in self.precision.items()
        }

    def floors(self) -> dict[str, float]:
        """The resolution floor γ/τ² per key: Fisher values well below it stay at the prior."""
        return {key: self.gamma / tau**2 for key, tau in self.tau.items()}


def merge_fits(fits: Sequence[VariationalFit]) -> VariationalFit:
    """One fit from fits of disjoint data with the same γ, τ and curvature: Λ − τ⁻², the mean
    curvature over γ, is averaged with the fits' step counts as weights (what one fit over all
    their steps would hold, each part sampling from its own q)."""
    if not fits:
        raise ValueError("merge_fits needs at least one fit")
    first = fits[0]
    for other in fits[1:]:
        if (other.gamma, other.tau, other.curvature) != (first.gamma, first.tau, first.curvature):
            raise ValueError("merge_fits needs fits with the same gamma, tau and curvature")
    steps = sum(f.steps for f in fits)
    precision = {}
    for key, tau in first.tau.items():
        prior = tau**-2
        mean = sum((f.precision[key] - prior) * (f.steps / steps) for f in fits)
        assert isinstance(mean, Tensor)
        precision[key] = mean + prior
    return VariationalFit(precision, first.gamma, dict(first.tau), steps, first.curvature)


def fit_variational(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    params: Mapping[str, Tensor] | None = None,
    steps: int,
    gamma: float | None = None,
    tau: float | Mapping[str, float] | None = None,
    lr: float | None = None,
    curvature: str = "fisher",
    tau_scale: float = TAU_SCALE,
    floor_quantile: float = FLOOR_QUANTILE,
    labels: str = "given",
    ignore_index: int = IGNORE_INDEX,
    perturbation: FeaturePerturbation | None = None,
    prior: Mapping[str, Tensor] | None = None,
    generator: torch.Generator | None = None,
    loss_fn: LossFn | None = None,
    chunk_size: int | None = None,
    max_chunk_elements: int = 2**27,
    progress: bool = False,
    across_processes: bool = False,
) -> VariationalFit:
    """Fit Eq. 11's posterior precision by natural-gradient SVI (see the module docstring).

    Each of the ``steps`` steps takes the next batch of ``batches`` (re-iterated when
    exhausted), draws ε with ``generator``, evaluates the model through ``functional_call`` at
    the sampled weights (the model itself is never modified) and updates Λ. ``params`` selects
    the scored tensors (default: every parameter with ``requires_grad``); ``prior`` maps their
    keys (or model names) to θ_pt (default: the current values), from which τ is derived.
    ``gamma`` / ``tau`` (a number, or one per key) override the derived values. ``lr`` is the
    natural-gradient step size: None (default) takes β_k = 1/(k + 1), the running mean of the
    curvature samples, which converges for a fixed posterior; a number in (0, 1] takes
    β_k = max(1/(k + 1), lr), which forgets the first samples (drawn from the prior) at that
    rate.

    ``labels``: ``"given"`` (the training loss, Eq. 11) or ``"sampled"`` (labels drawn from the
    detached softmax at the sampled weights: the true Fisher). With ``perturbation`` the fit is
    Λ_x' under the simulated shift (method.md §4). Under ``torch.distributed`` the curvature
    samples are averaged over ranks at every step, so all ranks hold the same fit;
    ``across_processes`` draws the sampled labels of each step's batches as one process with
    all of them would (see :func:`~fishertune.sensitivity.diagonal_fisher`). Per-sample
    gradients run in chunks as in :func:`~fishertune.sensitivity.diagonal.diagonal_fisher`.
    """
    check_labels(labels)
    if labels == "batch":
        raise ValueError("labels='batch' is a diagonal-Fisher mode; use 'given' or 'sampled'")
    check_fit_options(
        curvature=curvature, gamma=gamma, tau_scale=tau_scale, floor_quantile=floor_quantile
    )
    if lr is not None and not 0.0 < lr <= 1.0:
        raise ValueError(f"lr must lie in (0, 1] or be None, got {lr}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    names = resolve_params(model, params)
    engine = PerSampleGrads(
        model,
        names,
        perturbation,
        ignore_index,
        loss_fn,
        "auto",
        chunk_size,
        max_chunk_elements,
        across_processes,
    )
    theta_hat = {key: engine.current[name] for key, name in names.items()}
    taus = _resolve_tau(tau, _resolve_prior(prior, names, theta_hat), tau_scale)
    device = next(iter(theta_hat.values())).device
    running = {key: torch.zeros_like(t, dtype=torch.float32) for key, t in theta_hat.items()}
    noise = {key: torch.empty_like(s) for key, s in running.items()}
    data = cycle(batches)
    need_targets = labels == "given"
    model_loss = uses_model_loss(labels, loss_fn)
    fitted_gamma = gamma

    with eval_mode(model), perturbation if perturbation is not None else nullcontext():
        for step in track(range(steps), "variational Fisher", enabled=progress):
            inputs, targets = unpack_batch(
                next(data), device, need_targets=need_targets, model_loss=model_loss
            )
            std = {
                key: _sample_std(running[key], step, fitted_gamma, taus[key]) for key in theta_hat
            }
            if curvature == "fisher" and step % 2:
                for buffer in noise.values():  # antithetic: −ε of the previous step
                    buffer.neg_()
            else:
                _draw_noise(noise, generator)
            if curvature == "fisher":
                sample = _fisher_sample(
                    engine, theta_hat, std, noise, inputs, targets, labels, generator
                )
            else:
                sample = _hessian_sample(engine, theta_hat, std, noise, inputs, targets)
            if fitted_gamma is None:
                fitted_gamma = _gamma_at_floor(sample, taus, floor_quantile)
            beta = 1.0 / (step + 1) if lr is None else max(1.0 / (step + 1), lr)
            for key, h in sample.items():  # Λ − τ⁻² ← (1 − β)(Λ − τ⁻²) + β ĥ/γ, kept as γ(Λ − τ⁻²)
                running[key].mul_(1.0 - beta).add_(h, alpha=beta)
    assert fitted_gamma is not None
    precision = {key: m.div_(fitted_gamma).add_(taus[key] ** -2) for key, m in running.items()}
    return VariationalFit(precision, fitted_gamma, taus, steps, curvature)


def _sample_std(mean: Tensor, step: int, gamma: float | None, tau: float) -> Tensor:
    """√v of the current q: v = 1/Λ with Λ = τ⁻² + max(mean ĥ, 0)/γ (the prior at step 0)."""
    if step == 0 or gamma is None:
        return torch.full_like(mean, tau)
    return mean.clamp_min(0.0).div_(gamma).add_(tau**-2).rsqrt_()


def _weights(
    engine: PerSampleGrads,
    theta_hat: Mapping[str, Tensor],
    std: Mapping[str, Tensor],
    noise: Mapping[str, Tensor],
    sign: float,
) -> dict[str, Tensor]:
    """θ̂ + sign · √v ⊙ ε in each parameter's dtype, by the model's parameter names (what
    ``engine`` evaluates the model at)."""
    return {
        engine.names[key]: torch.addcmul(value.float(), std[key], noise[key], value=sign).to(
            value.dtype
        )
        for key, value in theta_hat.items()
    }


def _fisher_sample(
    engine: PerSampleGrads,
    theta_hat: Mapping[str, Tensor],
    std: Mapping[str, Tensor],
    noise: Mapping[str, Tensor],
    inputs: ModelInputs,
    targets: Tensor | None,
    labels: str,
    generator: torch.Generator | None,
) -> dict[str, Tensor]:
    """(1/B) Σ_i (∂ℓ_i/∂θ)² at θ̂ + √v ε, averaged over all ranks' samples."""
    weights = _weights(engine, theta_hat, std, noise, 1.0)
    sums = engine.square_sums(inputs, targets, labels=labels, generator=generator, weights=weights)
    device = next(iter(sums.values())).device
    count = torch.tensor(float(inputs.size), dtype=torch.float64, device=device)
    all_reduce_sum([*sums.values(), count])
    scale = 1.0 / float(count)
    return {key: s.float().mul_(scale) for key, s in sums.items()}


def _hessian_sample(
    engine: PerSampleGrads,
    theta_hat: Mapping[str, Tensor],
    std: Mapping[str, Tensor],
    noise: Mapping[str, Tensor],
    inputs: ModelInputs,
    targets: Tensor | None,
) -> dict[str, Tensor]:
    """ε ⊙ (∇L(θ̂ + √v ε) − ∇L(θ̂ − √v ε)) / (2√v), the two passes sharing the batch and, under
    a perturbation, its draw; gradients averaged over ranks."""
    grads = []
    recorded: list[Any] = []
    for sign in (1.0, -1.0):
        weights = _weights(engine, theta_hat, std, noise, sign)
        perturbation = engine.perturbation
        if perturbation is None:
            context: Any = nullcontext([])
        elif sign > 0:
            context = perturbation.record_offsets()
        else:
            context = perturbation.use_offsets(recorded)
        with context as drawn:
            grads.append(engine.batch_gradient(inputs, targets, weights))
        if sign > 0 and drawn is not None:
            recorded = list(drawn)
    ranks = world_size()
    if ranks > 1:
        flat = [g for pair in grads for g in pair.values()]
        all_reduce_sum(flat)
        for g in flat:
            g.div_(ranks)
    return {
        key: (grads[0][key].float() - grads[1][key].float())
        .mul_(noise[key])
        .div_(std[key].mul(2.0))
        for key in theta_hat
    }


def _gamma_at_floor(
    sample: Mapping[str, Tensor], taus: Mapping[str, float], quantile: float
) -> float:
    """γ = the ``quantile`` quantile of ĥ_n · τ_n² over the elements (floor γ/τ² at that
    quantile of the first step's curvature); the quantile of the positive values when it is
    0, and 1 when no element has positive curvature (every estimate is then 0)."""
    total = sum(s.numel() for s in sample.values())
    stride = max(1, math.ceil(total / _QUANTILE_SAMPLE))
    values = torch.cat(
        [s.flatten()[::stride].float().clamp_min(0.0) * taus[k] ** 2 for k, s in sample.items()]
    )
    gamma = float(torch.quantile(values, quantile))
    if gamma > 0:
        return gamma
    positive = values[values > 0]
    return float(torch.quantile(positive, quantile)) if positive.numel() else 1.0


def _draw_noise(noise: Mapping[str, Tensor], generator: torch.Generator | None) -> None:
    """Fill each buffer with a fresh standard normal ε (in place when the devices agree)."""
    for buffer in noise.values():
        if generator is None or generator.device == buffer.device:
            buffer.normal_(generator=generator)
        else:
            drawn = torch.randn(buffer.shape, generator=generator, device=generator.device)
            buffer.copy_(drawn)


def _resolve_prior(
    prior: Mapping[str, Tensor] | None,
    names: Mapping[str, str],
    theta_hat: Mapping[str, Tensor],
) -> dict[str, Tensor]:
    """θ_pt by key; ``prior`` is keyed like ``params`` (or by model name)."""
    if prior is None:
        return dict(theta_hat)
    out = {}
    for key, name in names.items():
        value = prior.get(key, prior.get(name))
        if value is None:
            raise ValueError(f"prior has no entry for parameter {key!r}")
        if value.shape != theta_hat[key].shape:
            raise ValueError(
                f"prior[{key!r}] has shape {tuple(value.shape)}, "
                f"expected {tuple(theta_hat[key].shape)}"
            )
        out[key] = value.detach().to(theta_hat[key].device)
    return out


def _resolve_tau(
    tau: float | Mapping[str, float] | None, prior: Mapping[str, Tensor], scale: float
) -> dict[str, float]:
    """τ by key: derived from the prior, one given number for all, or one per key."""
    if tau is None:
        return prior_scales(prior, scale)
    if isinstance(tau, Mapping):
        missing = sorted(set(prior) - set(tau))
        if missing:
            raise ValueError(f"tau has no entry for {missing[:5]}")
        values = {key: float(tau[key]) for key in prior}
    else:
        values = dict.fromkeys(prior, float(tau))
    for key, value in values.items():
        if not value > 0:
            raise ValueError(f"tau must be > 0, got {value} for {key!r}")
    return values
