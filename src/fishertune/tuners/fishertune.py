"""FisherTune (paper Algorithm 1): fine-tune the backbone elements with the highest DR-FIM.

Stages (method.md §8): the engine warms the decoder up with the backbone frozen; then
:meth:`FisherTuneTuner.estimate` scores every candidate element (Q, K, V, FFN of every block,
paper Eq. 3) by the Domain-Related Fisher (§5, Eq. 7) or its stable variational form (§6,
Eq. 15), F and the domain term combined scale-free by default (§5, ``combine``), and selects
the top δ_min; during tuning :meth:`FisherTuneTuner.on_step` grows the
nested selection to δ_max (§7) and :class:`~fishertune.optim.SparseAdamW` updates only it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from torch import Tensor, nn

from fishertune.sensitivity import (
    COMBINES,
    FLOOR_QUANTILE,
    LABEL_MODES,
    TAU_SCALE,
    VARIANTS,
    DomainTerm,
    EstimateQuality,
    FeaturePerturbation,
    VariationalFit,
    check_fit_options,
    diagonal_fisher,
    dr_fim,
    entry_perturbation,
    fit_variational,
    median_floor,
    merge_fits,
    stable_dr_fim,
)
from fishertune.tuners.base import backbone_of
from fishertune.tuners.registry import register
from fishertune.tuners.scoring import (
    ScoredConfig,
    ScoredTuner,
    halves,
    merge_means,
)
from fishertune.tuners.sparse import seeded_generator

Scores = dict[str, Tensor]
E = TypeVar("E")
"""One estimate of a half: a :class:`VariationalFit` or a diagonal Fisher by key."""

ESTIMATORS = ("diagonal", "variational")


@dataclass
class FisherTuneConfig(ScoredConfig):
    """FisherTune's options; the budget, candidates and schedule are those of the base configs.

    The paper reports none of γ, τ, δ_min, the estimation length or the optimiser of Eq. 11;
    the defaults below are our choices, with the reasons.

    Attributes:
        variant: the score (paper Table 4): ``"F"`` (task-only Fisher), ``"dF"`` (the domain
            term alone) or ``"DRF"`` (F and c × the domain term, the method).
        combine: how F and the domain term make the DRF (method.md §5, decided 2026-12-03):
            ``"normalised"`` (default: F/mean(F) + c·ΔF̃/mean(ΔF̃), ΔF̃ the relative shift
            with the resolution floor φ), ``"rank"`` (the sum of their quantiles, c-weighted)
            or ``"paper"`` (Eqs. 7 and 15 as printed, where the units of the loss decide which
            term ranks). Every estimate reports whether the DRF selection is the F or the ΔF̃
            selection (:class:`~fishertune.sensitivity.DomainTerm`).
        estimator: ``"variational"`` (the stable estimate, §6, Eqs. 11–15: Λ_x and Λ_x' fitted
            by :func:`~fishertune.sensitivity.fit_variational`, combined by ``stable_dr_fim``)
            or ``"diagonal"`` (per image squared gradients, §3, Eqs. 8–9, combined by
            ``dr_fim``; Fig. 5's baseline).
        schedule: ``"grow"`` (default, δ_min → δ_max) or ``"constant"`` (δ_max throughout).
        labels: label mode of the estimator; None takes the paper's: ``"sampled"`` for the
            diagonal estimator (the true Fisher, Eq. 9), ``"given"`` for the variational one
            (Eq. 11's expected training loss). ``"batch"`` only with the diagonal estimator.
        gamma: γ of Eq. 11; None (default) derives it from the data: the floor γ/τ² at the
            ``floor_quantile`` quantile of the curvature of the first variational step.
        tau: τ of the prior N(θ_pt, τ²I); None (default) derives it per tensor as
            ``tau_scale`` × the root mean square of the pretrained tensor, so that the sampled
            weights stay where Eq. 12's expansion holds.
        tau_scale: see ``tau`` (0.1).
        floor_quantile: see ``gamma`` (0.5: half the elements resolved, far below the few
            percent a budget selects).
        curvature: ``"fisher"`` (Eq. 12's Fisher at the sampled weights, the default) or
            ``"hessian"`` (Eq. 11's exact expected-loss curvature, antithetic samples; noisy on
            deep networks, see :mod:`fishertune.sensitivity.variational`).
        variational_steps: natural-gradient steps of each of the two fits (clean, shifted),
            split between the two halves of the estimation batches; a step costs a forward and
            a per-sample backward. 500 each: 1000 steps are 2.5% of Rein's 40k iterations.
        diagnostics: also estimate the diagonal Fisher on the estimation batches and report
            the stable F's agreement with it (one more pass over the batches).

    The simulated domain shift (method.md §4) perturbs the tokens entering the first block with
    scale s = ``perturbation_scale`` (default 1.0), the same DSU perturbation that
    ``train_perturbation`` would apply during training (off by default, paper Sec. 4.3).
    """

    schedule: str = "grow"
    variant: str = "DRF"
    combine: str = "normalised"
    estimator: str = "variational"
    labels: str | None = None
    gamma: float | None = None
    tau: float | None = None
    tau_scale: float = TAU_SCALE
    floor_quantile: float = FLOOR_QUANTILE
    curvature: str = "fisher"
    variational_steps: int = 500
    diagnostics: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.combine not in COMBINES:
            raise ValueError(f"combine must be one of {COMBINES}, got {self.combine!r}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        if self.labels is not None and self.labels not in LABEL_MODES:
            raise ValueError(f"labels must be one of {LABEL_MODES} or None, got {self.labels!r}")
        if self.estimator == "variational" and self.labels == "batch":
            raise ValueError("labels='batch' needs estimator='diagonal'")
        check_fit_options(
            curvature=self.curvature,
            gamma=self.gamma,
            tau_scale=self.tau_scale,
            floor_quantile=self.floor_quantile,
        )
        if self.tau is not None and not self.tau > 0:
            raise ValueError(f"tau must be > 0 or null (derived), got {self.tau}")
        if self.variational_steps < 1:
            raise ValueError(f"variational_steps must be >= 1, got {self.variational_steps}")


@register("fishertune")
class FisherTuneTuner(ScoredTuner):
    """DR-FIM-guided sparse fine-tuning with a growing selection (FisherTune, CVPR 2025).

    ``estimate(batches)`` computes the clean estimate (F or Λ_x) on the source batches and the
    shifted one (F' or Λ_x') on the same batches under the simulated shift, with identical
    label / ε draws in both (common random numbers: the difference reflects the shift, not
    Monte-Carlo noise), and combines them by ``variant`` (``"F"`` skips the shifted pass).
    Each estimate is made on the two halves of the batches separately and merged, so the
    split-half reliability of F, ΔF and DRF comes at no extra cost. The selection starts at
    δ_min and grows as method.md §7 prescribes; the trainable size reported is δ_max of all
    backbone parameters (15.21M on ViT-L).
    """

    config_class = FisherTuneConfig
    config: FisherTuneConfig

    @property
    def perturbs_batch_statistics(self) -> bool:
        """The estimation's shifted pass (every variant but ``"F"``) perturbs by batch
        statistics, as ``train_perturbation`` does."""
        return self.config.variant != "F" or self.config.train_perturbation

    def compute_scores(
        self, batches: Sequence[Any], params: Mapping[str, nn.Parameter], progress: bool = False
    ) -> tuple[dict[str, Tensor], EstimateQuality]:
        """DR-FIM (``"diagonal"``, Eq. 7) or stable DR-FIM (``"variational"``, Eq. 15), each
        estimated on the two halves of ``batches`` (:func:`halves`) and merged."""
        cfg = self.config
        device = next(iter(params.values())).device
        shift = entry_perturbation(
            backbone_of(self.segmentor, "the feature perturbation"),
            cfg.perturbation_scale,
            seeded_generator(device, cfg.seed),
        )
        parts = halves(batches)
        variants = ("F",) if cfg.variant == "F" else VARIANTS
        if cfg.estimator == "diagonal":
            return self._diagonal_scores(parts, params, shift, variants, progress)
        return self._stable_scores(batches, parts, params, shift, variants, progress)

    def _finish(
        self,
        score: Callable[[int | None, str], dict[str, Tensor]],
        parts: int,
        variants: Sequence[str],
        quality: EstimateQuality,
        coef: float,
    ) -> tuple[dict[str, Tensor], EstimateQuality]:
        """The merged score of the configured variant, with the split-half reliability of every
        variant and (when a shifted estimate was made) the :class:`DomainTerm` check added to
        ``quality``. ``score(half, variant)`` scores one half (0, 1) or the merged estimate
        (None)."""
        quality = replace(
            quality, reliability=self.reliability(parts, variants, lambda h, v: score(h, v))
        )
        if self.config.variant == "F":
            return score(None, "F"), quality
        merged = {v: score(None, v) for v in VARIANTS}
        together = self.agreement(merged["F"], merged["dF"])
        term = DomainTerm(
            self.config.combine,
            coef,
            self.overlap(merged["DRF"], merged["F"]),
            self.overlap(merged["DRF"], merged["dF"]),
            together.spearman,
            together.count,
            together.elements,
        )
        return merged[self.config.variant], replace(quality, domain_term=term)

    def _half_scores(
        self,
        count: int,
        shift: FeaturePerturbation,
        estimate: Callable[[int, FeaturePerturbation | None], E],
        merge: Callable[[list[E]], E],
        combine: Callable[[E, E, str], dict[str, Tensor]],
    ) -> tuple[E, Callable[[int | None, str], dict[str, Tensor]]]:
        """The skeleton both estimators share: ``estimate`` each of the ``count`` halves on
        clean and (unless the variant is ``"F"``) ``shift``-ed features, ``merge`` the halves,
        and ``combine`` a clean and a shifted estimate into a variant's score. Returns the
        merged clean estimate and ``score(half, variant)`` of one half (0, 1) or the merged
        estimate (None)."""
        clean = [estimate(index, None) for index in range(count)]
        shifted = (
            clean if self.config.variant == "F" else [estimate(i, shift) for i in range(count)]
        )
        merged, merged_shifted = merge(clean), merge(shifted)

        def score(half: int | None, variant: str) -> dict[str, Tensor]:
            if half is None:
                return combine(merged, merged_shifted, variant)
            return combine(clean[half], shifted[half], variant)

        return merged, score

    def _stable_scores(
        self,
        batches: Sequence[Any],
        parts: list[list[Any]],
        params: Mapping[str, nn.Parameter],
        shift: FeaturePerturbation,
        variants: Sequence[str],
        progress: bool,
    ) -> tuple[dict[str, Tensor], EstimateQuality]:
        cfg = self.config
        device = next(iter(params.values())).device
        steps = [cfg.variational_steps - cfg.variational_steps // 2, cfg.variational_steps // 2]
        if len(parts) == 1 or steps[1] == 0:
            parts, steps = [list(batches)], [cfg.variational_steps]
        hyper: dict[str, Any] = {"gamma": cfg.gamma, "tau": cfg.tau}

        def fit(index: int, perturbation: FeaturePerturbation | None) -> VariationalFit:
            result = fit_variational(
                self.segmentor,
                parts[index],
                params=params,
                steps=steps[index],
                curvature=cfg.curvature,
                tau_scale=cfg.tau_scale,
                floor_quantile=cfg.floor_quantile,
                labels=cfg.labels or "given",
                perturbation=perturbation,
                generator=seeded_generator(device, cfg.seed + 1 + index),
                progress=progress,
                across_processes=True,
                **hyper,
            )
            hyper.update(gamma=result.gamma, tau=result.tau)  # one γ and τ for every fit
            return result

        candidates = self.candidates()

        def combine(lam: VariationalFit, shifted: VariationalFit, variant: str) -> Scores:
            return stable_dr_fim(
                lam.precision,
                shifted.precision,
                gamma=lam.gamma,
                tau=lam.tau,
                coef=shift.coef,
                variant=variant,
                combine=cfg.combine,
                candidates=candidates,
            )

        merged, score = self._half_scores(len(parts), shift, fit, merge_fits, combine)

        agreement = None
        if cfg.diagnostics:
            reference = diagonal_fisher(
                self.segmentor,
                batches,
                params=params,
                labels=cfg.labels or "given",
                generator=seeded_generator(device, cfg.seed + 1),
                progress=progress,
                across_processes=True,
            )
            agreement = self.agreement(merged.fisher(), reference)
        floors = merged.floors().values()
        quality = EstimateQuality(
            {},
            agreement,
            "variational",
            {
                "gamma": merged.gamma,
                "tau_min": min(merged.tau.values()),
                "tau_max": max(merged.tau.values()),
                "floor_min": min(floors),
                "floor_max": max(floors),
            },
        )
        return self._finish(score, len(parts), variants, quality, shift.coef)

    def _diagonal_scores(
        self,
        parts: list[list[Any]],
        params: Mapping[str, nn.Parameter],
        shift: FeaturePerturbation,
        variants: Sequence[str],
        progress: bool,
    ) -> tuple[dict[str, Tensor], EstimateQuality]:
        cfg = self.config
        device = next(iter(params.values())).device

        def fisher(index: int, perturbation: FeaturePerturbation | None) -> Scores:
            return diagonal_fisher(
                self.segmentor,
                parts[index],
                params=params,
                labels=cfg.labels or "sampled",
                perturbation=perturbation,
                generator=seeded_generator(device, cfg.seed + 1),
                progress=progress,
                across_processes=True,
            )

        candidates = self.candidates()

        def combine(f: Scores, shifted: Scores, variant: str) -> Scores:
            return dr_fim(
                f,
                shifted,
                coef=shift.coef,
                variant=variant,
                combine=cfg.combine,
                candidates=candidates,
            )

        merged, score = self._half_scores(
            len(parts), shift, fisher, lambda halves_: merge_means(halves_, parts), combine
        )

        hyper = {} if cfg.combine == "paper" else {"floor": median_floor(merged, candidates)}
        quality = EstimateQuality({}, None, "diagonal", hyper)
        return self._finish(score, len(parts), variants, quality, shift.coef)
