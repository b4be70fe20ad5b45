"""Which backbone element is what: block index and kind (Q, K, V, O, FFN1, FFN2, norm, other).

Selection is element-wise (method.md §2) but reports, plots and group-restricted baselines need
the Q / K / V / FFN split per block, also inside fused ``qkv`` weights whose rows [0:C] are Q,
[C:2C] K and [2C:3C] V.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

from fishertune.selection import GroupSlice

KINDS = ("Q", "K", "V", "O", "FFN1", "FFN2", "norm", "other")
CANDIDATE_KINDS = ("Q", "K", "V", "FFN1", "FFN2")
"""The paper's candidates (Eq. 3): Q, K, V and the FFN of every block."""

_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.(.+)$")
_SEPARATE = {
    "q_proj": "Q",
    "k_proj": "K",
    "v_proj": "V",
    "q_bias": "Q",
    "k_bias": "K",
    "v_bias": "V",
}
_FFN1 = ("mlp.fc1", "mlp.fc1_g", "mlp.fc1_x", "mlp.w12", "mlp.w1", "mlp.w2")
_FFN2 = ("mlp.fc2", "mlp.w3")


@dataclass(frozen=True)
class ParameterGroup:
    """Elements ``parameter[index]`` of block ``block`` (None outside blocks) are of ``kind``."""

    block: int | None
    kind: str
    name: str
    index: tuple[slice, ...]

    def as_group_slice(self) -> GroupSlice:
        """The same elements for :func:`fishertune.selection.group_selection`, grouped by kind."""
        return GroupSlice(self.name, self.index, self.kind)


def _kind_in_block(rest: str) -> str:
    """Kind of a parameter named ``blocks.<i>.<rest>`` (not a fused qkv tensor)."""
    module, _, leaf = rest.rpartition(".")
    if module.startswith("attn"):
        last = module.split(".")[-1]
        if last in _SEPARATE:
            return _SEPARATE[last]
        if leaf in _SEPARATE:  # EVA's q_bias / v_bias next to a fused qkv weight
            return _SEPARATE[leaf]
        if last == "proj":
            return "O"
        if "norm" in last:
            return "norm"
        return "other"  # e.g. SAM's rel_pos_h / rel_pos_w
    if module in _FFN1:
        return "FFN1"
    if module in _FFN2:
        return "FFN2"
    if "norm" in module.split(".")[-1]:
        return "norm"
    return "other"  # layer scales (ls1.gamma), ...


def parameter_groups(backbone: nn.Module) -> list[ParameterGroup]:
    """Every trainable element of ``backbone``, once, with its block and kind.

    Covers timm's layouts of the five VFM families: fused ``attn.qkv`` (ViT, DINOv2, CLIP, MAE,
    SAM and EVA02-tiny/small, split row-wise into Q, K, V, with EVA's ``q_bias`` / ``v_bias``),
    separate ``q_proj`` / ``k_proj`` / ``v_proj`` (EVA02-base/large), SwiGLU / GLU FFNs
    (``fc1_g`` and ``fc1_x``, packed ``fc1``) as FFN1, and SAM's relative-position tables as
    ``other``. Parameters outside the blocks (patch and position embeddings, tokens, final
    norms) get ``block=None``. Names are those of ``backbone.named_parameters()``.
    """
    groups: list[ParameterGroup] = []
    for name, param in backbone.named_parameters():
        found = _BLOCK.search(name)
        whole = tuple(slice(0, n) for n in param.shape[:1])
        if found is None:
            leaf = name.rsplit(".", 1)[0].split(".")[-1]
            kind = "norm" if "norm" in leaf else "other"
            groups.append(ParameterGroup(None, kind, name, whole))
            continue
        block, rest = int(found.group(1)), found.group(2)
        if rest in ("attn.qkv.weight", "attn.qkv.bias"):
            rows = param.shape[0]
            if rows % 3:
                raise ValueError(f"{name}: fused qkv with {rows} rows is not divisible by 3")
            c = rows // 3
            for i, kind in enumerate(("Q", "K", "V")):
                groups.append(ParameterGroup(block, kind, name, (slice(i * c, (i + 1) * c),)))
            continue
        groups.append(ParameterGroup(block, _kind_in_block(rest), name, whole))
    return groups


def group_slices(
    groups: Iterable[ParameterGroup], kinds: Iterable[str] = CANDIDATE_KINDS
) -> list[GroupSlice]:
    """The groups of the given kinds as :class:`GroupSlice` for candidate selections."""
    wanted = set(kinds)
    unknown = wanted - set(KINDS)
    if unknown:
        raise ValueError(f"unknown kinds {sorted(unknown)}; choose from {KINDS}")
    return [g.as_group_slice() for g in groups if g.kind in wanted]


def count_by_kind(backbone: nn.Module) -> dict[str, int]:
    """Number of elements of each kind (for reports)."""
    counts = dict.fromkeys(KINDS, 0)
    params = dict(backbone.named_parameters())
    for g in parameter_groups(backbone):
        counts[g.kind] += params[g.name][g.index].numel()
    return counts
