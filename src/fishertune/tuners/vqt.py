"""Visual Query Tuning (Tu, Mai, Chao, "Visual Query Tuning: Towards Effective Usage of
Intermediate Representations for Parameter and Memory Efficient Transfer Learning", CVPR 2023),
adapted to dense prediction (method.md §9, Table 1: 3.01M on ViT-L).

VQT adds m learnable query tokens P_l ∈ R^{m×C} to every block l. They are extra *queries* of
the block's frozen self-attention: their keys and values are those of the block's own tokens
(class, register and patch tokens), they are not keys or values of anything, so the block's
tokens are untouched and the backbone's features are exactly the frozen ones. Each block's
query outputs (attention and FFN of the frozen block with its residuals, layer scales and
norms) "summarise" that block; they are not passed to the next block (every block has its own
P_l).

Feeding the summaries to a segmentation head (our design; the paper's head is a linear
classifier on the concatenated query outputs): the blocks are split into stages ending at the
backbone's output blocks (ViT-L: 0–7, 8–11, 12–15, 16–23), and every pixel of a stage's output
map f reads its stage's query outputs Z (n·m of them) by parameter-free dot-product attention
with a shared, trained value projection W:

    f ← f + softmax(LN(f) LN(Z)ᵀ / √C) · W(Z)

(LN: layer norm without affine parameters). W starts at zero, so training starts from the
frozen backbone's features, as LoRA or AdaptFormer do; the neck and head then see the adapted
maps. Gradients only flow through the query paths and W, never through the backbone's tokens
(VQT's memory saving).

Trainable size (backbone side): L·m·C + C² + C. With the default m = 80 on ViT-L (24 × 1024):
24·80·1024 + 1024² + 1024 = 1,966,080 + 1,049,600 = 3,015,680 (≈ the paper's 3.01M).

Supported blocks: timm's ViT ``Block`` with the standard ``Attention`` (DINOv2, CLIP, MAE and
other plain ViTs). EVA02's rotary attention and SAM's windowed ``(B, H, W, C)`` blocks are
rejected with a ValueError. Query tokens are initialised like VPT's/VQT's prompts: uniform in
±√(6 / (3p² + C)) with p the patch size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers.attention import Attention
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from fishertune.models.segmentor import Segmentor
from fishertune.tuners.base import Tuner, TunerConfig, backbone_of, named_blocks
from fishertune.tuners.registry import register

ADAPTER_NAME = "vqt"
"""Attribute of the backbone holding the adapter (state-dict prefix ``backbone.vqt.``)."""


@dataclass
class VQTConfig(TunerConfig):
    """VQT options.

    Attributes:
        num_tokens: m, query tokens per block (80 gives the paper's 3.01M on ViT-L).
    """

    num_tokens: int = 80

    def __post_init__(self) -> None:
        if self.num_tokens < 1:
            raise ValueError(f"vqt needs num_tokens ≥ 1, got {self.num_tokens}")


def stages(out_indices: Sequence[int]) -> list[list[int]]:
    """Per output block e, the blocks since the previous (smaller) output block, up to e.

    ``(7, 11, 15, 23)`` → blocks 0–7, 8–11, 12–15, 16–23; a repeated index repeats its stage.
    """
    ends = sorted(set(out_indices))
    starts = {end: (ends[k - 1] + 1 if k else 0) for k, end in enumerate(ends)}
    return [list(range(starts[end], end + 1)) for end in out_indices]


class VQTAdapter(nn.Module):
    """Query tokens of every block, the shared value projection and the stage read-out.

    Args:
        num_blocks: L.
        dim: C.
        num_tokens: m.
        patch_size: p (initialisation bound).
        out_indices: the backbone's output blocks, one per feature map it returns.
        reference: a tensor whose device and dtype the parameters take (a backbone weight).
    """

    def __init__(
        self,
        num_blocks: int,
        dim: int,
        num_tokens: int,
        patch_size: int,
        out_indices: Sequence[int],
        reference: Tensor,
    ) -> None:
        super().__init__()
        factory: dict[str, Any] = {"device": reference.device, "dtype": reference.dtype}
        self.query_tokens = nn.Parameter(torch.empty(num_blocks, num_tokens, dim, **factory))
        self.proj = nn.Linear(dim, dim, **factory)
        self.stages = stages(out_indices)
        self.outputs: dict[int, Tensor] = {}
        bound = math.sqrt(6.0 / (3 * patch_size**2 + dim))
        with torch.no_grad():
            nn.init.uniform_(self.query_tokens, -bound, bound)
            nn.init.zeros_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)

    def read_out(self, features: Sequence[Tensor]) -> list[Tensor]:
        """Add each stage's read-out of its query outputs to its ``(B, C, h, w)`` map."""
        if len(features) != len(self.stages):
            raise ValueError(f"vqt expects {len(self.stages)} feature maps, got {len(features)}")
        missing = sorted({i for stage in self.stages for i in stage} - set(self.outputs))
        if missing:
            raise RuntimeError(f"vqt: no query outputs recorded for blocks {missing}")
        maps = []
        for feature, stage in zip(features, self.stages, strict=True):
            batch, dim, height, width = feature.shape
            summaries = torch.cat([self.outputs[i] for i in stage], dim=1)
            pixels = feature.flatten(2).transpose(1, 2)
            read = F.scaled_dot_product_attention(
                F.layer_norm(pixels, (dim,)),
                F.layer_norm(summaries, (dim,)),
                self.proj(summaries),
            )
            maps.append((pixels + read).transpose(1, 2).reshape(batch, dim, height, width))
        return maps

    def clear(self, backbone: nn.Module, args: tuple[Any, ...]) -> None:
        """Forward pre-hook of the backbone: forget the previous forward's query outputs."""
        self.outputs.clear()

    def add_read_out(
        self, backbone: nn.Module, args: tuple[Any, ...], features: list[Tensor]
    ) -> list[Tensor]:
        """Forward hook of the backbone: its maps plus the read-outs (then frees the outputs)."""
        maps = self.read_out(features)
        self.outputs.clear()
        return maps


class _QueryPass:
    """Forward hook of block ``index``'s ``attn.qkv``: the block applied to its query tokens.

    The hook receives the qkv projection of the block's (normalised) tokens, so their keys and
    values are reused, not recomputed; the queries' own q comes from the same frozen weights.
    """

    def __init__(self, adapter: VQTAdapter, index: int, block: Block, attn: Attention) -> None:
        self.adapter = adapter
        self.index = index
        self.block = block
        self.attn = attn

    def __call__(self, qkv_layer: nn.Module, args: tuple[Any, ...], qkv: Tensor) -> None:
        self.adapter.outputs[self.index] = query_outputs(
            self.block, self.attn, self.adapter.query_tokens[self.index], qkv
        )


def query_outputs(block: Block, attn: Attention, tokens: Tensor, qkv: Tensor) -> Tensor:
    """Outputs ``(B, m, C)`` of query tokens ``(m, C)`` through a frozen timm ``Block`` (with
    attention ``attn`` = ``block.attn``) whose tokens have the qkv projection ``qkv``
    ``(B, N, 3·A)``: queries attend to the N tokens only (not to each other), then the block's
    residuals, layer scales, norms and FFN apply."""
    batch, length, _ = qkv.shape
    heads, head_dim, width = attn.num_heads, attn.head_dim, attn.num_heads * attn.head_dim
    _, keys, values = (
        qkv.reshape(batch, length, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    )
    x = tokens.unsqueeze(0).expand(batch, -1, -1)
    normed = block.norm1(x)
    bias = None if attn.qkv.bias is None else attn.qkv.bias[:width]
    queries = F.linear(normed, attn.qkv.weight[:width], bias)
    queries = queries.reshape(batch, -1, heads, head_dim).transpose(1, 2)
    mixed = F.scaled_dot_product_attention(
        attn.q_norm(queries),
        attn.k_norm(keys),
        values,
        dropout_p=attn.attn_drop.p if attn.training else 0.0,
        scale=attn.scale,
    )
    mixed = mixed.transpose(1, 2).reshape(batch, -1, width)
    norm = getattr(attn, "norm", None)
    if isinstance(norm, nn.Module):
        mixed = norm(mixed)
    gate = getattr(attn, "gate", None)
    if isinstance(gate, nn.Module):
        mixed = mixed * gate(normed).sigmoid()
    mixed = attn.proj_drop(attn.proj(mixed))
    x = x + block.drop_path1(block.ls1(mixed))
    out: Tensor = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
    return out


@register("vqt")
class VQTTuner(Tuner):
    """Visual Query Tuning: per-block query tokens whose outputs the features read (3.02M on
    ViT-L)."""

    config_class = VQTConfig
    added_modules = (VQTAdapter,)
    config: VQTConfig

    def attach(self, segmentor: Segmentor) -> None:
        config = self.config
        backbone = segmentor.backbone
        vit = backbone_of(segmentor, self.name)
        blocks: list[tuple[Block, Attention]] = []
        for index, block in named_blocks(segmentor):
            attn = getattr(block, "attn", None)
            if not isinstance(block, Block) or not isinstance(attn, Attention):
                raise ValueError(
                    "vqt runs its query tokens through timm ViT blocks with standard attention "
                    f"(DINOv2, CLIP, MAE); block {index} is a {type(block).__module__}."
                    f"{type(block).__name__} (EVA02's rotary and SAM's windowed blocks are not "
                    "supported)"
                )
            blocks.append((block, attn))
        adapter = VQTAdapter(
            len(blocks),
            vit.embed_dim,
            config.num_tokens,
            segmentor.patch_size,
            vit.out_indices,
            next(backbone.parameters()),
        )
        self.add_module(backbone, ADAPTER_NAME, adapter)
        for index, (block, attn) in enumerate(blocks):
            self.keep(attn.qkv.register_forward_hook(_QueryPass(adapter, index, block, attn)))
        self.keep(backbone.register_forward_pre_hook(adapter.clear))
        self.keep(backbone.register_forward_hook(adapter.add_read_out))
