"""LoRA (Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022).

The paper's setting, used as the DGSS baseline (method.md §9): rank r = 8 on the query and value
projections W_q, W_v of every block, update ΔW = (α/r)·B A with A ∈ R^{r×in} initialised like
the reference implementation (Kaiming-uniform, a = √5) and B ∈ R^{out×r} zero, so training
starts from the pretrained model; α = r here (scaling 1). On ViT-L (24 blocks × 1024) this is
24 · 2 · (8·1024 + 1024·8) = 786,432 trainable elements (0.79M).

Mechanism: a :mod:`torch.nn.utils.parametrize` parametrization of the projection's weight,
W ↦ W + (α/r)·B_t A_t added to the row block of each target t. It acts wherever the weight is
read, which covers every timm layout with one code path:

- fused ``attn.qkv`` (ViT, DINOv2, CLIP, MAE, SAM; rows [0:C] Q, [C:2C] K, [2C:3C] V): only
  the Q and V row blocks get an update, K rows are the pretrained ones;
- EVA02-tiny/small's fused ``qkv``, which ``EvaAttention`` reads as ``F.linear(x,
  self.qkv.weight, bias)`` without calling the module (a module wrapper or forward hook would
  silently miss it); the q/v biases stay frozen;
- separate ``q_proj`` / ``v_proj`` (EVA02-base/large): the whole weight is the target block.

Consequences: while attached, the pretrained weight is stored as
``<proj>.parametrizations.weight.original`` and the factors as
``<proj>.parametrizations.weight.0.lora_A.<Q|V>`` / ``lora_B.<Q|V>``; parametrized modules are
saved through ``state_dict()`` only (``torch.save(model)`` refuses them; deep copies work).
Every forward rebuilds the effective weight (one weight-sized tensor per projection, which the
linear layer keeps for backward: about 0.3 GB in float32 on ViT-L without autocast), and
backward forms the dense gradient of that weight before reducing it to A and B: one extra
qkv-sized matmul per block, roughly +8% of a block's training compute compared with adding
x Aᵀ Bᵀ to the layer's output. :meth:`LoRATuner.merge` removes the parametrization leaving
W + ΔW as the plain ``weight``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from fishertune.models.segmentor import Segmentor
from fishertune.tuners.base import Tuner, TunerConfig, named_blocks
from fishertune.tuners.registry import register

QKV = ("Q", "K", "V")
"""The row blocks of a fused ``qkv`` weight, in timm's order."""


@dataclass
class LoRAConfig(TunerConfig):
    """LoRA options (defaults: the paper's rank 8 on Q and V).

    Attributes:
        rank: r, the rank of each update.
        alpha: α; the update is scaled by α / r.
        targets: which of the attention projections Q, K, V get an update.
    """

    rank: int = 8
    alpha: float = 8.0
    targets: tuple[str, ...] = ("Q", "V")

    def __post_init__(self) -> None:
        self.targets = tuple(self.targets)
        if self.rank < 1:
            raise ValueError(f"lora rank must be at least 1, got {self.rank}")
        unknown = sorted(set(self.targets) - set(QKV))
        if unknown or not self.targets:
            raise ValueError(
                f"lora targets must be a non-empty subset of {QKV}, got {self.targets}"
            )


class LowRankUpdate(nn.Module):
    """Parametrization W ↦ W + scaling · B_t A_t on the row block of each target t.

    Args:
        weight: the weight it will parametrize (its shape, device and dtype are used).
        blocks: names of the equal row blocks of ``weight`` in order (``QKV`` for a fused
            projection, e.g. ``("Q",)`` for ``q_proj``).
        targets: the blocks that get an update.
        rank: r.
        scaling: α / r.
    """

    def __init__(
        self,
        weight: Tensor,
        blocks: Sequence[str],
        targets: Sequence[str],
        rank: int,
        scaling: float,
    ) -> None:
        super().__init__()
        rows, columns = weight.shape
        if rows % len(blocks):
            raise ValueError(f"a weight with {rows} rows cannot be split into blocks {blocks}")
        self.blocks = tuple(blocks)
        self.block_rows = rows // len(blocks)
        self.scaling = scaling
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        for name in self.blocks:
            if name not in targets:
                continue
            down = torch.empty(rank, columns, device=weight.device, dtype=weight.dtype)
            nn.init.kaiming_uniform_(down, a=math.sqrt(5))
            self.lora_A[name] = nn.Parameter(down)
            self.lora_B[name] = nn.Parameter(
                torch.zeros(self.block_rows, rank, device=weight.device, dtype=weight.dtype)
            )

    def delta(self, name: str) -> Tensor:
        """ΔW of block ``name``: scaling · B A, of shape ``(block_rows, in_features)``."""
        update: Tensor = self.scaling * (self.lora_B[name] @ self.lora_A[name])
        return update

    def forward(self, weight: Tensor) -> Tensor:
        parts = [
            part + self.delta(name) if name in self.lora_A else part
            for name, part in zip(self.blocks, weight.chunk(len(self.blocks)), strict=True)
        ]
        return parts[0] if len(parts) == 1 else torch.cat(parts)


def _projections(
    attn: nn.Module, targets: Sequence[str]
) -> list[tuple[nn.Linear, tuple[str, ...]]]:
    """The linear layers holding the targets and the row blocks of their weights."""
    qkv = getattr(attn, "qkv", None)
    if isinstance(qkv, nn.Linear):
        return [(qkv, QKV)]
    found: list[tuple[nn.Linear, tuple[str, ...]]] = []
    for name in targets:
        proj = getattr(attn, f"{name.lower()}_proj", None)
        if not isinstance(proj, nn.Linear):
            raise ValueError(
                f"lora: {type(attn).__name__} has neither a fused `qkv` nor a "
                f"`{name.lower()}_proj` linear layer"
            )
        found.append((proj, (name,)))
    return found


@register("lora")
class LoRATuner(Tuner):
    """Rank-r updates of the Q and V projections of every block (0.79M on ViT-L)."""

    config_class = LoRAConfig
    added_modules = (LowRankUpdate,)
    config: LoRAConfig

    def attach(self, segmentor: Segmentor) -> None:
        config = self.config
        for index, block in named_blocks(segmentor):
            attn = getattr(block, "attn", None)
            if not isinstance(attn, nn.Module):
                raise ValueError(f"lora: block {index} has no `attn` module")
            for proj, blocks in _projections(attn, config.targets):
                update = LowRankUpdate(
                    proj.weight, blocks, config.targets, config.rank, config.alpha / config.rank
                )
                parametrize.register_parametrization(proj, "weight", update)

    def merge(self) -> None:
        """Replace every LoRA-parametrized weight by W + ΔW; the factors are removed."""
        self._remove(merged=True)

    def undo(self) -> None:
        """Give every LoRA-parametrized layer its pretrained weight W back (ΔW discarded)."""
        self._remove(merged=False)

    def _remove(self, *, merged: bool) -> None:
        parametrized = [
            module
            for module in self.segmentor.modules()
            if parametrize.is_parametrized(module, "weight")
            and any(isinstance(p, LowRankUpdate) for p in _weight_parametrizations(module))
        ]
        for module in parametrized:
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=merged)


def _weight_parametrizations(module: nn.Module) -> nn.ModuleList:
    """The parametrizations stacked on ``module.weight``."""
    stacked = module.get_submodule("parametrizations.weight")
    if not isinstance(stacked, nn.ModuleList):
        raise TypeError(f"unexpected parametrization container {type(stacked).__name__}")
    return stacked
