"""Deep visual prompt tuning (Jia et al., "Visual Prompt Tuning", ECCV 2022).

VPT-deep as in the paper: before every block, P learnable prompt tokens are inserted after the
prefix tokens (class and register tokens), ``[prefix, prompts, patches]``; after the block the
prompt outputs are dropped, so the next block gets fresh prompts and the patch tokens the
backbone returns keep their count and shape. P = 150 as in the DGSS comparison (method.md §9):
24 · 150 · 1024 = 3,686,400 trainable elements on ViT-L (3.69M). Prompts are initialised
uniform(−v, v) with v = √(6 / (3·p² + C)) (the paper's Xavier-style bound for patch size p and
width C) and get no weight decay (their name contains "token", Rein's convention).

The prompts of block i live at ``blocks.i.vpt.tokens``; a forward pre-hook on the block inserts
them and a forward hook removes them, so the pretrained parameter names are unchanged.

Rotary position embeddings (EVA02): timm's ``EvaAttention`` (and ``AttentionRope``) rotates the
queries and keys of all tokens after its ``num_prefix_tokens`` with the patch grid's rope. Its
``num_prefix_tokens`` is raised by P, so prompts are treated like the class token (no rotation)
and the patch tokens keep their positions. SAM's blocks run windowed attention on
``(B, H, W, C)`` maps, not token sequences, and cannot take prompts: applying VPT to them is an
error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from timm.layers.attention import AttentionRope
from timm.models.eva import EvaAttention
from timm.models.vision_transformer_sam import VisionTransformerSAM
from torch import Tensor, nn

from fishertune.models.segmentor import Segmentor
from fishertune.tuners.base import Tuner, TunerConfig, backbone_of, named_blocks
from fishertune.tuners.registry import register


@dataclass
class VPTConfig(TunerConfig):
    """VPT-deep options.

    Attributes:
        num_tokens: P, prompt tokens per block.
    """

    num_tokens: int = 150

    def __post_init__(self) -> None:
        if self.num_tokens < 1:
            raise ValueError(f"vpt num_tokens must be at least 1, got {self.num_tokens}")


class DeepPrompt(nn.Module):
    """The prompt tokens of one block and the hooks inserting and removing them.

    Args:
        num_tokens: P.
        dim: token width C.
        num_prefix_tokens: tokens ahead of the patch tokens; prompts go right after them.
        bound: v of the uniform(−v, v) initialisation.
        reference: a tensor whose device and dtype the prompts take (a weight of the block).
    """

    def __init__(
        self, num_tokens: int, dim: int, num_prefix_tokens: int, bound: float, reference: Tensor
    ) -> None:
        super().__init__()
        self.num_prefix_tokens = num_prefix_tokens
        self.tokens = nn.Parameter(
            torch.empty(num_tokens, dim, device=reference.device, dtype=reference.dtype)
        )
        nn.init.uniform_(self.tokens, -bound, bound)

    def insert(
        self, block: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Forward pre-hook: ``x`` (B, N, C) → ``[prefix, prompts, rest]`` (B, N + P, C)."""
        x, *rest = args
        n = self.num_prefix_tokens
        prompts = self.tokens.expand(x.shape[0], -1, -1)
        return (torch.cat([x[:, :n], prompts, x[:, n:]], dim=1), *rest), kwargs

    def remove(self, block: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
        """Forward hook: drop the prompt outputs, (B, N + P, C) → (B, N, C)."""
        n = self.num_prefix_tokens
        return torch.cat([output[:, :n], output[:, n + self.tokens.shape[0] :]], dim=1)


@register("vpt")
class VPTTuner(Tuner):
    """P learnable prompt tokens before every block (3.69M on ViT-L with P = 150)."""

    config_class = VPTConfig
    added_modules = (DeepPrompt,)
    config: VPTConfig

    def __init__(self, config: VPTConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        self._widened: list[EvaAttention | AttentionRope] = []
        """Rotary attentions (EVA02) told to skip the prompts like prefix tokens."""

    def attach(self, segmentor: Segmentor) -> None:
        config = self.config
        backbone = backbone_of(segmentor, self.name)
        if isinstance(backbone.model, VisionTransformerSAM):
            raise ValueError(
                "vpt cannot prompt the SAM family (samvit_*): its blocks run windowed attention "
                "on (B, H, W, C) maps, not on token sequences; use lora or adaptformer instead"
            )
        dim, num_prefix = backbone.embed_dim, backbone.num_prefix_tokens
        bound = math.sqrt(6.0 / (3 * segmentor.patch_size**2 + dim))
        for _, block in named_blocks(segmentor):
            prompt = DeepPrompt(config.num_tokens, dim, num_prefix, bound, next(block.parameters()))
            self.add_module(block, "vpt", prompt)
            self.keep(block.register_forward_pre_hook(prompt.insert, with_kwargs=True))
            self.keep(block.register_forward_hook(prompt.remove))
            attn = getattr(block, "attn", None)
            if isinstance(attn, EvaAttention | AttentionRope):
                attn.num_prefix_tokens += config.num_tokens
                self._widened.append(attn)

    def undo(self) -> None:
        """The rotary attentions count the prompts as prefix tokens no more."""
        for attn in self._widened:
            attn.num_prefix_tokens -= self.config.num_tokens
        self._widened = []
