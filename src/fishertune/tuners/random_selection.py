"""Random selection of the budget: the "Random" and "Random Q / K / V" rows of Table 4."""

from __future__ import annotations

from dataclasses import dataclass

from fishertune.models.parameter_groups import ParameterGroup
from fishertune.selection import Selection, random_selection
from fishertune.tuners.registry import register
from fishertune.tuners.sparse import BudgetConfig, BudgetTuner, seeded_generator

GROUPS = ("all", "Q", "K", "V")


@dataclass
class RandomConfig(BudgetConfig):
    """A uniformly random, fixed subset of the budget (method.md §9).

    Attributes:
        group: ``"all"`` draws among the ``candidates`` kinds (Q, K, V, FFN of every block);
            ``"Q"``, ``"K"`` or ``"V"`` only among those elements of every block (the rows of
            fused ``qkv`` tensors included), as the paper's Random Q / K / V.
        seed: seeds the draw (on the parameters' device, so masks repeat per device type).
    """

    group: str = "all"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.group not in GROUPS:
            raise ValueError(f"group must be one of {GROUPS}, got {self.group!r}")


@register("random")
class RandomTuner(BudgetTuner):
    """Exactly ``budget`` elements drawn uniformly among the candidates, fixed for training,
    trained with :class:`~fishertune.optim.SparseAdamW` (the rest never changes)."""

    config_class = RandomConfig
    config: RandomConfig

    def candidate_groups(self, groups: list[ParameterGroup]) -> list[ParameterGroup]:
        """The ``candidates`` kinds for ``group="all"``, else only Q, K or V of every block."""
        if self.config.group == "all":
            return super().candidate_groups(groups)
        return [g for g in groups if g.kind == self.config.group]

    def initial_selection(self) -> Selection:
        """A seeded uniform draw of ``budget`` candidate elements (``random_selection``)."""
        candidates = self.candidates()
        device = next(iter(self.candidate_params().values())).device
        return random_selection(
            candidates.shapes,
            count=self.budget(),
            candidates=candidates,
            generator=seeded_generator(device, self.config.seed),
            device=device,
        )
