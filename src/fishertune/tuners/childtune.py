"""ChildTune-D and ChildTune-F (Xu et al., EMNLP 2021), the selective baselines of Tables 1–3.

Both train 15.21M elements of ViT-L (method.md §9) among the same candidates as FisherTune.
ChildTune-D fixes one mask from the task-only Fisher; ChildTune-F keeps every candidate
trainable and drops a fresh random share of the gradient at every step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from fishertune.selection import Selection
from fishertune.sensitivity import LABEL_MODES, EstimateQuality, diagonal_fisher
from fishertune.tuners.base import TunerConfig
from fishertune.tuners.registry import register
from fishertune.tuners.scoring import (
    ScoredConfig,
    ScoredTuner,
    halves,
    merge_means,
)
from fishertune.tuners.sparse import BudgetConfig, BudgetTuner, seeded_generator


@dataclass
class ChildTuneDConfig(ScoredConfig):
    """ChildTune-D: a fixed top-k mask of the task-only Fisher F (paper Table 4's ``F``).

    Attributes:
        labels: label mode of the diagonal Fisher (method.md §3): ``"given"`` (default: the
            empirical Fisher with the ground truth, as ChildTune-D computes it), ``"sampled"``
            (the true Fisher, Eq. 9) or ``"batch"`` (squared batch gradients, ChildTune's own
            cheap estimate).
        schedule: ``"constant"`` (ChildTune's fixed mask); ``"grow"`` is accepted for ablations.
    """

    labels: str = "given"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.labels not in LABEL_MODES:
            raise ValueError(f"labels must be one of {LABEL_MODES}, got {self.labels!r}")


@register("childtune_d")
class ChildTuneDTuner(ScoredTuner):
    """Top ``budget`` candidates by the diagonal Fisher of the source task (no domain term).

    ``estimate(batches)`` computes F (method.md §3, paper Eqs. 8–9) on the source batches and
    selects its global top-k; training uses :class:`~fishertune.optim.SparseAdamW`, so the
    unselected elements never change. (The original masks gradients inside AdamW, which still
    decays the masked weights; method.md §7's "no change at all" is applied to all sparse
    methods alike.)
    """

    config_class = ChildTuneDConfig
    config: ChildTuneDConfig

    def compute_scores(
        self, batches: Sequence[Any], params: Mapping[str, nn.Parameter], progress: bool = False
    ) -> tuple[dict[str, Tensor], EstimateQuality]:
        """The diagonal Fisher F of the candidate tensors on ``batches``, estimated on the two
        halves of the batches (their agreement is the split-half reliability) and merged."""
        device = next(iter(params.values())).device
        generator = seeded_generator(device, self.config.seed)
        parts = halves(batches)
        estimates = [
            diagonal_fisher(
                self.segmentor,
                part,
                params=params,
                labels=self.config.labels,
                generator=generator,
                progress=progress,
                across_processes=True,
            )
            for part in parts
        ]
        reliability = self.reliability(len(parts), ("F",), lambda half, _: estimates[half])
        quality = EstimateQuality(reliability, None, "diagonal", {})
        return merge_means(estimates, parts), quality


@register("childtune_f")
class ChildTuneFTuner(BudgetTuner):
    """Every candidate trains under AdamW; each step keeps a fresh Bernoulli(p) share of the
    candidates' gradients, scaled by 1/p (ChildTuning-F).

    As published, the gradient is masked and the optimiser is plain AdamW, so the moments and
    the weight decay of all candidates keep acting (every candidate element may change): here
    the candidate tensors update with AdamW (densely where a tensor is candidate whole, through
    :class:`~fishertune.optim.SparseAdamW` on its candidate elements otherwise, so that
    non-candidates never change). p = budget / candidate elements, so the expected number of
    elements receiving a gradient per step is the budget, the size the paper reports (15.21M on
    ViT-L). The saved state holds every candidate tensor (all of them may have changed).
    """

    config_class = BudgetConfig
    config: BudgetConfig

    def __init__(self, config: TunerConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        self._generator: torch.Generator | None = None
        self._candidates: dict[str, Tensor] | None = None

    def initial_selection(self) -> Selection:
        """All candidate elements are trainable (the gradient mask is drawn per step)."""
        return self.candidates()

    @property
    def keep_probability(self) -> float:
        """p of the Bernoulli gradient mask: the budget over the number of candidates."""
        return self.budget() / self.candidate_count

    def generators(self) -> dict[str, torch.Generator]:
        """The generator of the per-step gradient masks (on the candidates' device)."""
        if self._generator is None:
            device = next(iter(self.candidate_params().values())).device
            self._generator = seeded_generator(device, self.config.seed)
        return {"gradient_mask": self._generator}

    def after_backward(self) -> None:
        """Keep each candidate's gradient with probability p, scaled by 1/p; zero the rest."""
        if self._candidates is None:
            self._candidates = self.candidates().as_masks()
        p = self.keep_probability
        generator = self.generators()["gradient_mask"]
        for name, param in self.candidate_params().items():
            grad = param.grad
            if grad is None:
                continue
            draw = torch.rand(grad.shape, generator=generator, device=grad.device)
            grad.mul_((draw < p) & self._candidates[name]).div_(p)
