"""Train chosen parameter groups whole: the layer-group study of the paper's Fig. 3."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fishertune.models.parameter_groups import CANDIDATE_KINDS, ParameterGroup
from fishertune.selection import Selection
from fishertune.tuners.base import TunerConfig
from fishertune.tuners.registry import register
from fishertune.tuners.sparse import SparseTuner, parse_kinds


def parse_blocks(blocks: str | Sequence[int]) -> tuple[int, ...]:
    """Block indices from ``"12-23"``, ``"0,3,8-11"`` (ranges inclusive) or a sequence of ints."""
    if isinstance(blocks, str):
        out: list[int] = []
        for part in blocks.split(","):
            first, dash, last = part.strip().partition("-")
            try:
                low, high = int(first), int(last if dash else first)
            except ValueError:
                raise ValueError(
                    f"cannot read block range {part.strip()!r} in {blocks!r}"
                ) from None
            if high < low:
                raise ValueError(f"empty block range {part.strip()!r}")
            out.extend(range(low, high + 1))
    else:
        out = [int(b) for b in blocks]
    if not out or min(out) < 0:
        raise ValueError(f"blocks must be non-negative block indices, got {blocks!r}")
    return tuple(sorted(set(out)))


@dataclass
class ManualConfig(TunerConfig):
    """The groups to train.

    Attributes:
        blocks: block indices, ``"12-23"`` / ``"0,3,8-11"`` or a list of ints; None = all.
        kinds: element kinds, ``"Q,K"`` or a sequence (``"FFN"`` = FFN1 and FFN2); default Q, K,
            V, FFN1, FFN2 (paper Eq. 3).
    """

    blocks: str | Sequence[int] | None = None
    kinds: str | Sequence[str] = CANDIDATE_KINDS

    def __post_init__(self) -> None:
        if self.blocks is not None:
            parse_blocks(self.blocks)
        parse_kinds(self.kinds)


@register("manual")
class ManualTuner(SparseTuner):
    """Exactly the elements of the listed kinds in the listed blocks train (Fig. 3 pairs
    Q / K / V / FFN groups of block ranges); no data needed.

    The elements are selected through the shared sparse machinery: tensors selected whole
    (e.g. ``mlp.fc1.weight``) update densely with AdamW, the Q / K / V rows of a fused ``qkv``
    tensor through :class:`~fishertune.optim.SparseAdamW`, so the other rows never change; the
    saved state holds whole tensors and the row deltas respectively.
    """

    config_class = ManualConfig
    config: ManualConfig

    def candidate_groups(self, groups: list[ParameterGroup]) -> list[ParameterGroup]:
        """The groups of the listed kinds in the listed blocks (which must exist)."""
        kinds = set(parse_kinds(self.config.kinds))
        present = {g.block for g in groups if g.block is not None}
        blocks = present if self.config.blocks is None else set(parse_blocks(self.config.blocks))
        absent = sorted(blocks - present)
        if absent:
            raise ValueError(
                f"blocks {absent} do not exist; the backbone has blocks 0-{max(present)}"
            )
        return [g for g in groups if g.block in blocks and g.kind in kinds]

    def budget(self) -> int:
        """Every element of the listed groups."""
        return self.candidate_count

    def initial_selection(self) -> Selection:
        """The listed groups, whole."""
        return self.candidates()
