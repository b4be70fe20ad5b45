"""Score-driven selection: the estimation stage and the growth schedule (method.md §7–§8).

FisherTune and ChildTune-D select the top-k of per-element sensitivity scores computed from
source data (:meth:`ScoredTuner.estimate`, Algorithm 1 step 2) and, with the ``grow`` schedule,
enlarge the selection during tuning (Algorithm 1 step 3, paper Eq. 16 as method.md §7 reads it)
through :meth:`ScoredTuner.on_step`. The top-k is global (the paper's) or allocated per tensor
or shuffled within the global per-tensor counts (:func:`~fishertune.selection.allocated_top_k`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from fishertune.models.segmentor import Segmentor
from fishertune.selection import (
    ALLOCATIONS,
    SCHEDULE_KINDS,
    Selection,
    allocated_top_k,
    check_fraction,
    trainable_fraction,
)
from fishertune.sensitivity import (
    Agreement,
    EstimateQuality,
    score_agreement,
    split_batches,
    topk_overlap,
)
from fishertune.tuners.base import TunerConfig
from fishertune.tuners.sparse import BudgetConfig, BudgetTuner, estimate_first, seeded_generator

SHUFFLE_STREAM = 104_729
"""Added to ``seed`` for the generator of the random keys of ``allocation="shuffled"`` (apart
from the estimators' streams, which use ``seed`` and the next few integers)."""


@dataclass
class ScoredConfig(BudgetConfig):
    """Options of the score-driven methods (FisherTune, ChildTune-D): the schedule of §7.

    Attributes:
        schedule: ``"grow"`` (p(t) from δ_min to δ_max, method.md §7) or ``"constant"`` (δ_max
            throughout, the paper's "5% fine-tunable" ablation, Table 4).
        min_fraction: δ_min, the share of all backbone parameters trained at the first step of
            ``grow``. The paper gives no value; 0.01 (a fifth of δ_max) is our choice.
        refresh_every: the masks grow every this many steps (and at the last step, which trains
            exactly δ_max). Algorithm 1 re-thresholds every step; with 40k steps p(t) moves by
            at most ~1.6e-6 of the backbone per step, so 100 steps between top-k refreshes (each
            a pass over all candidate scores) change the schedule negligibly.
        allocation: where the budget goes (:func:`~fishertune.selection.allocated_top_k`):
            ``"global"`` (default, the paper's global top-k), ``"per_tensor"`` (each candidate
            tensor a share proportional to its candidates, top-k by score within it) or
            ``"shuffled"`` (global top-k's per-tensor counts, drawn at random within each
            tensor: the control that separates where the budget goes from which elements).
    """

    schedule: str = "constant"
    min_fraction: float = 0.01
    refresh_every: int = 100
    allocation: str = "global"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.schedule not in SCHEDULE_KINDS:
            raise ValueError(f"schedule must be one of {SCHEDULE_KINDS}, got {self.schedule!r}")
        check_fraction(self.min_fraction, "min_fraction")
        if self.refresh_every < 1:
            raise ValueError(f"refresh_every must be >= 1, got {self.refresh_every}")
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {self.allocation!r}")


class ScoredTuner(BudgetTuner):
    """Selection by the top-k of sensitivity scores, grown by the schedule (§7, Alg. 1).

    :meth:`estimate` (method.md §8 step 2) computes the scores with :meth:`compute_scores` and
    selects the first share p(0); :meth:`on_step` grows the selection to
    round(p(t) × all backbone parameters) elements under the configured ``allocation``, keeping
    the previous selection, so the selected sets are nested, and hands the grown selection to
    the optimiser.
    """

    config_class = ScoredConfig
    config: ScoredConfig
    estimates = True

    def __init__(self, config: TunerConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        self._scores: dict[str, Tensor] | None = None
        self._random_keys: dict[str, Tensor] | None = None

    def attach(self, segmentor: Segmentor) -> None:
        """As :meth:`SparseTuner.attach`, also checking δ_min ≤ δ_max."""
        super().attach(segmentor)
        if self.config.schedule == "grow" and self.config.min_fraction > self.max_fraction:
            raise ValueError(
                f"min_fraction={self.config.min_fraction} exceeds the budget's share "
                f"{self.max_fraction:.6g} of the backbone"
            )

    def compute_scores(
        self, batches: Sequence[Any], params: Mapping[str, nn.Parameter], progress: bool = False
    ) -> tuple[dict[str, Tensor], EstimateQuality]:
        """Sensitivity scores of ``params`` (name → tensor of the parameter's shape) and what
        is known of their quality (split-half reliability, agreement with a diagonal Fisher);
        with ``progress``, the estimators show their bars."""
        raise NotImplementedError

    def candidate_scores(
        self, scores: Mapping[str, Tensor], candidates: Selection | None = None
    ) -> dict[str, Tensor]:
        """``scores`` with the elements that are not candidates set to −inf (``candidates``:
        :meth:`candidates`, when the caller already has it)."""
        chosen = self.candidates() if candidates is None else candidates
        out = dict(scores)
        for name in chosen:
            out[name] = scores[name].float().masked_fill(~chosen.mask(name), -math.inf)
        return out

    def top_count(self) -> int:
        """k of the compared top sets of the diagnostics: the final budget (at least 1)."""
        return max(min(self.budget(), self.candidate_count), 1)

    def overlap(self, a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
        """|top-k(a) ∩ top-k(b)| / k over the candidate elements, k the final budget."""
        candidates = self.candidates()
        return topk_overlap(
            self.candidate_scores(a, candidates),
            self.candidate_scores(b, candidates),
            self.top_count(),
        )

    def agreement(self, a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> Agreement:
        """:func:`~fishertune.sensitivity.score_agreement` of two estimates over the candidate
        elements, the top sets being the size of the final budget."""
        candidates = self.candidates()
        return score_agreement(
            self.candidate_scores(a, candidates),
            self.candidate_scores(b, candidates),
            count=self.top_count(),
        )

    def reliability(
        self, parts: int, variants: Sequence[str], score: Callable[[int, str], Mapping[str, Tensor]]
    ) -> dict[str, Agreement]:
        """Split-half reliability: per variant, the :meth:`agreement` of ``score(0, variant)``
        and ``score(1, variant)``, the scores estimated on each half of the batches; empty
        when the estimate had a single part (one batch)."""
        if parts != 2:
            return {}
        return {v: self.agreement(score(0, v), score(1, v)) for v in variants}

    def estimate(
        self, batches: Iterable[tuple[Tensor, Tensor]], *, progress: bool = False
    ) -> dict[str, Tensor]:
        """The estimation stage (method.md §8 step 2): score the candidates, select p(0).

        ``batches`` yields ``(images, targets)`` source batches (materialised as a list: the
        estimators pass over the data more than once and split it in halves). Elements that
        are not candidates get the score −inf. Returns the scores (kept for the growth);
        :attr:`quality` then holds their :class:`~fishertune.sensitivity.EstimateQuality`.
        Must run once, before training; ``progress`` shows the estimators' progress bars.
        """
        if self._selection is not None:
            raise RuntimeError(
                f"tuner {self.name!r} already has a selection; estimate() runs once, before "
                "training"
            )
        scores, self.quality = self.compute_scores(list(batches), self.candidate_params(), progress)
        scores = self.candidate_scores(scores)
        self.use_scores(scores)
        return scores

    def use_scores(self, scores: Mapping[str, Tensor], *, select: bool = True) -> None:
        """Adopt scores computed earlier (e.g. :meth:`estimate`'s, saved by a run being
        resumed) and, with ``select``, select p(0) as :meth:`estimate` does (a resumed run
        whose selection came back with :meth:`load_saved` keeps it and only needs the scores
        to grow it). Keys and shapes must be those of the candidate tensors, non-candidates
        −inf."""
        if select and self._selection is not None:
            raise RuntimeError(f"tuner {self.name!r} already has a selection")
        params = self.candidate_params()
        if set(scores) != set(params):
            missing, unknown = sorted(set(params) - set(scores)), sorted(set(scores) - set(params))
            raise ValueError(
                f"scores must cover exactly the candidate tensors of {self.name!r}; "
                f"missing {missing[:5]}, unknown {unknown[:5]}"
            )
        for name, param in params.items():
            if scores[name].shape != param.shape:
                raise ValueError(
                    f"score of {name!r} has shape {tuple(scores[name].shape)}, the parameter "
                    f"{tuple(param.shape)}"
                )
        self._scores = {name: scores[name].to(params[name].device) for name in params}
        if self.config.allocation == "shuffled":
            device = next(iter(params.values())).device
            generator = seeded_generator(device, self.config.seed + SHUFFLE_STREAM)
            self._random_keys = {
                name: torch.rand(param.shape, generator=generator, device=device).to(param.device)
                for name, param in params.items()
            }
        if select:
            self.select(self.allocate(self.scheduled_count(0, 1)))

    def allocate(self, count: int) -> Selection:
        """``count`` candidate elements by the scores under the configured ``allocation``,
        keeping the current selection (nested growth)."""
        return allocated_top_k(
            self.scores,
            count,
            allocation=self.config.allocation,
            candidates=self.candidates(),
            keep=self._selection,
            random_keys=self._random_keys,
        )

    @property
    def has_scores(self) -> bool:
        """Whether scores exist (:meth:`estimate` or :meth:`use_scores` ran)."""
        return self._scores is not None

    @property
    def scores(self) -> dict[str, Tensor]:
        """The scores computed by :meth:`estimate`."""
        if self._scores is None:
            raise estimate_first(self.name)
        return self._scores

    def trainable_now(self) -> int:
        """The elements selected so far (the selection grows to the budget)."""
        return self.selected_count

    def scheduled_count(self, step: int, total_steps: int) -> int:
        """round(p(t) × all backbone parameters) at training step ``step`` of ``total_steps``.

        ``on_step`` is called before each of the steps 0 … total_steps − 1, so the schedule of
        method.md §7 runs over t = step with T = total_steps − 1: the first step trains δ_min,
        the last exactly the budget δ_max.
        """
        fraction = trainable_fraction(
            step,
            max(total_steps - 1, 1),
            min(self.config.min_fraction, self.max_fraction),
            self.max_fraction,
            self.config.schedule,
        )
        return round(fraction * self._total)

    def on_step(self, step: int, total_steps: int) -> None:
        """Grow the selection every ``refresh_every`` steps and at the last step."""
        if step % self.config.refresh_every and step != total_steps - 1:
            return
        count = self.scheduled_count(step, total_steps)
        if count != self.selected_count:
            self.select(self.allocate(count))


def halves(batches: Sequence[Any]) -> list[list[Any]]:
    """The two halves of the estimation batches (:func:`~fishertune.sensitivity.split_batches`)
    or, with a single batch, that batch alone."""
    return list(split_batches(batches)) if len(batches) >= 2 else [list(batches)]


def merge_means(
    estimates: Sequence[Mapping[str, Tensor]], parts: Sequence[Sequence[Any]]
) -> dict[str, Tensor]:
    """One mean from per-part means (e.g. the Fisher estimated on each half of the batches),
    each weighted by its part's number of samples: the mean over all the parts' samples."""
    weights = [sum(int(batch[0].shape[0]) for batch in part) for part in parts]
    total = float(sum(weights))
    merged = {}
    for key in estimates[0]:
        value = torch.zeros_like(estimates[0][key])
        for estimate, weight in zip(estimates, weights, strict=True):
            value.add_(estimate[key], alpha=weight / total)
        merged[key] = value
    return merged
