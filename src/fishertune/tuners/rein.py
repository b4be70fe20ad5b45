"""Rein (Wei et al., "Stronger, Fewer, & Superior: Harnessing Vision Foundation Models for Domain
Generalized Semantic Segmentation", CVPR 2024), the paper's main adapter baseline (method.md §10).

Per block i there are m learnable tokens T_i = A_i B_i (A_i ∈ R^{m×r}, B_i ∈ R^{r×C}); two C→C
linears ``token2feat`` and ``delta`` and a scalar ``scale`` are shared by all blocks. After block
i, the patch tokens f (class and register tokens pass untouched) are refined as

    attn = softmax(f T_iᵀ / √C)                   (over the m tokens)
    Δ    = attn[:, 1:] · token2feat(T_i[1:])       (token 0 is in the softmax, not in the values)
    f   ← f + scale · delta(Δ + f)

Query link (a query-based head): P = link_transform(stack_i T_i) ∈ R^{L×m×q} (q = the head's
hidden size, 256); per token and channel the maximum over blocks, the mean over blocks and the
last block's value are concatenated (3q = 768) and ``link_merge`` maps them back to q: one
query per token. As in Rein's code (``Reins.return_auto``) the three values of a channel are
adjacent: ``merge``'s input is ``[max_0, mean_0, last_0, max_1, mean_1, last_1, ...]``.

Wiring into :class:`~fishertune.models.heads.mask2former.Mask2FormerHead` (Rein's
``ReinMask2FormerHead`` with ``replace_query_feat=True``): the link output is the queries'
positional embedding (``query_pos``) and a q→q linear of it, ``head.querys2feat``, is the
decoder's initial query content (``queries``). The head's learned ``queries_embedder`` and
``queries_features`` are replaced, so they are frozen. ``querys2feat`` belongs to the decoder
(it replaces a decoder embedding and is counted on the decoder side); the trainable backbone
side is exactly tokens + ``token2feat`` + ``delta`` + ``scale`` + the two link linears:

    24 · (100·16 + 16·1024) + 2 · (1024² + 1024) + 1 + (1024·256 + 256) + (768·256 + 256)
    = 431,616 + 2,099,200 + 1 + 262,400 + 196,864 = 2,990,081   (ViT-L, Mask2Former head)

With a head without queries (the linear head) there is no link and the link linears are not
created: 2,530,817 on ViT-L (the 2.53M of Rein's Figure 5).

Layouts: timm ViT / EVA02 blocks output ``(B, N, C)`` with ``num_prefix_tokens`` leading class
and register tokens, which pass untouched; SAM blocks output ``(B, H, W, C)`` maps without
prefix tokens, which are refined as ``H·W`` patch tokens (as Rein's SAM backbone does).

Initialisation (Rein's ``LoRAReins``): A and B uniform in ±√(6 / (3p² + √(C·r))) with p the
patch size, so T = AB is small; ``token2feat``, ``delta`` and the link linears keep PyTorch's
``nn.Linear`` initialisation (Rein re-applies the same Kaiming-uniform); ``scale`` = 1e-3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from fishertune.models.heads.mask2former import Mask2FormerHead
from fishertune.models.segmentor import Segmentor
from fishertune.tuners.base import Tuner, TunerConfig, backbone_of, named_blocks
from fishertune.tuners.registry import register

ADAPTER_NAME = "rein"
"""Attribute of the backbone holding the adapter (state-dict prefix ``backbone.rein.``)."""

QUERY_FEAT_NAME = "querys2feat"
"""Attribute of the Mask2Former head holding the link → query-feature linear (Rein's name)."""


@dataclass
class ReinConfig(TunerConfig):
    """Rein options (defaults: the paper's, method.md §10).

    Attributes:
        num_tokens: m, learnable tokens per block (with the query link also the number of
            queries, which must equal the Mask2Former head's ``num_queries``).
        rank: r of the low-rank tokens T_i = A_i B_i.
        scale_init: initial value of the learnable scalar ``scale``.
        link_queries: link the tokens to the queries of a Mask2Former head (Rein's
            ``link_token_to_query``); ignored for heads without queries.
    """

    num_tokens: int = 100
    rank: int = 16
    scale_init: float = 1e-3
    link_queries: bool = True

    def __post_init__(self) -> None:
        if self.num_tokens < 1 or self.rank < 1:
            raise ValueError(
                f"rein needs num_tokens ≥ 1 and rank ≥ 1, got {self.num_tokens} and {self.rank}"
            )


class ReinAdapter(nn.Module):
    """Rein's tokens, shared refinement MLPs, scale and (optionally) query link (method.md §10).

    Args:
        num_blocks: L, blocks refined (one token set each).
        dim: C, the token width.
        num_tokens: m.
        rank: r.
        patch_size: p, used by Rein's initialisation bound.
        scale_init: initial ``scale``.
        query_dim: q, the width of the linked queries; ``None``: no query link.
        reference: a tensor whose device and dtype the parameters take (a backbone weight).
    """

    def __init__(
        self,
        num_blocks: int,
        dim: int,
        num_tokens: int,
        rank: int,
        patch_size: int,
        scale_init: float,
        query_dim: int | None,
        reference: Tensor,
    ) -> None:
        super().__init__()
        factory: dict[str, Any] = {"device": reference.device, "dtype": reference.dtype}
        self.dim = dim
        self.learnable_tokens_a = nn.Parameter(torch.empty(num_blocks, num_tokens, rank, **factory))
        self.learnable_tokens_b = nn.Parameter(torch.empty(num_blocks, rank, dim, **factory))
        self.scale = nn.Parameter(torch.full((), scale_init, **factory))
        self.token2feat = nn.Linear(dim, dim, **factory)
        self.delta = nn.Linear(dim, dim, **factory)
        self.link_transform: nn.Linear | None = None
        self.link_merge: nn.Linear | None = None
        if query_dim is not None:
            self.link_transform = nn.Linear(dim, query_dim, **factory)
            self.link_merge = nn.Linear(3 * query_dim, query_dim, **factory)
        bound = math.sqrt(6.0 / (3 * patch_size**2 + math.sqrt(dim * rank)))
        with torch.no_grad():
            nn.init.uniform_(self.learnable_tokens_a, -bound, bound)
            nn.init.uniform_(self.learnable_tokens_b, -bound, bound)

    def tokens(self) -> Tensor:
        """All tokens T = A B, ``(L, m, C)``."""
        return self.learnable_tokens_a @ self.learnable_tokens_b

    def refine(self, features: Tensor, index: int) -> Tensor:
        """Rein's update of patch tokens ``(B, N, C)`` after block ``index``."""
        tokens = self.learnable_tokens_a[index] @ self.learnable_tokens_b[index]
        attn = torch.softmax(features @ tokens.transpose(0, 1) / math.sqrt(self.dim), dim=-1)
        delta = attn[..., 1:] @ self.token2feat(tokens[1:])
        out: Tensor = features + self.scale * self.delta(delta + features)
        return out

    def link(self) -> Tensor:
        """The linked queries ``(m, q)``: merge of max, mean and last over blocks."""
        if self.link_transform is None or self.link_merge is None:
            raise RuntimeError("this Rein adapter was built without a query link")
        projected = self.link_transform(self.tokens())
        pooled = torch.stack([projected.amax(0), projected.mean(0), projected[-1]], dim=-1)
        out: Tensor = self.link_merge(pooled.flatten(-2))
        return out


class _RefineBlockOutput:
    """Forward hook of block ``index``: Rein's refinement of the block's patch tokens."""

    def __init__(self, adapter: ReinAdapter, index: int, num_prefix_tokens: int) -> None:
        self.adapter = adapter
        self.index = index
        self.num_prefix_tokens = num_prefix_tokens

    def __call__(self, block: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
        if output.dim() == 4:  # SAM: (B, H, W, C) maps, no prefix tokens
            batch, height, width, dim = output.shape
            flat = output.reshape(batch, height * width, dim)
            return self.adapter.refine(flat, self.index).reshape(batch, height, width, dim)
        if output.dim() != 3:
            raise ValueError(
                f"rein expects block outputs (B, N, C) or (B, H, W, C), got {tuple(output.shape)}"
            )
        prefix = self.num_prefix_tokens
        patches = self.adapter.refine(output[:, prefix:], self.index)
        if prefix == 0:
            return patches
        return torch.cat([output[:, :prefix], patches], dim=1)


class _LinkQueries:
    """Forward pre-hook of the Mask2Former head: queries it is not given come from the link.

    ``query_pos`` = link output and ``queries`` = ``querys2feat(link output)`` (Rein's head);
    queries passed explicitly to the head are left as they are.
    """

    def __init__(self, adapter: ReinAdapter, querys2feat: nn.Linear) -> None:
        self.adapter = adapter
        self.querys2feat = querys2feat

    def __call__(
        self, head: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        features, *rest = args
        queries = rest[0] if rest else kwargs.pop("queries", None)
        query_pos = rest[1] if len(rest) > 1 else kwargs.pop("query_pos", None)
        if queries is None or query_pos is None:
            linked = self.adapter.link()
            query_pos = linked if query_pos is None else query_pos
            queries = self.querys2feat(linked) if queries is None else queries
        return (features, queries, query_pos), kwargs


@register("rein")
class ReinTuner(Tuner):
    """Rein: refinement tokens after every block, linked to the head's queries (2.99M on ViT-L
    with the Mask2Former head, 2.53M without a query link)."""

    config_class = ReinConfig
    added_modules = (ReinAdapter,)
    config: ReinConfig

    def __init__(self, config: TunerConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        self._linked_head: Mask2FormerHead | None = None

    def apply(self, segmentor: Segmentor) -> ReinTuner:
        """As :meth:`Tuner.apply`, then freeze the learned query embeddings the link replaces."""
        super().apply(segmentor)
        if self._linked_head is not None:
            self._linked_head.transformer.queries_embedder.requires_grad_(False)
            self._linked_head.transformer.queries_features.requires_grad_(False)
        return self

    def attach(self, segmentor: Segmentor) -> None:
        config = self.config
        backbone = segmentor.backbone
        vit = backbone_of(segmentor, self.name)
        blocks = [block for _, block in named_blocks(segmentor)]
        head = segmentor.head
        linked = head if config.link_queries and isinstance(head, Mask2FormerHead) else None
        if linked is not None and linked.num_queries != config.num_tokens:
            raise ValueError(
                f"rein's query link gives one query per token: num_tokens ({config.num_tokens}) "
                f"must equal the Mask2Former head's num_queries ({linked.num_queries}); change "
                "one of them or pass link_queries=False"
            )
        adapter = ReinAdapter(
            len(blocks),
            vit.embed_dim,
            config.num_tokens,
            config.rank,
            segmentor.patch_size,
            config.scale_init,
            None if linked is None else linked.hidden_dim,
            next(backbone.parameters()),
        )
        self.add_module(backbone, ADAPTER_NAME, adapter)
        prefix = vit.num_prefix_tokens
        for index, block in enumerate(blocks):
            self.keep(block.register_forward_hook(_RefineBlockOutput(adapter, index, prefix)))
        if linked is not None:
            weight = linked.class_predictor.weight
            querys2feat = nn.Linear(
                linked.hidden_dim, linked.hidden_dim, device=weight.device, dtype=weight.dtype
            )
            self.add_module(linked, QUERY_FEAT_NAME, querys2feat)
            self.keep(
                linked.register_forward_pre_hook(
                    _LinkQueries(adapter, querys2feat), with_kwargs=True
                )
            )
            self._linked_head = linked

    def undo(self) -> None:
        """Forget the linked head (its query embeddings train again: :meth:`detach` restores
        every ``requires_grad``)."""
        self._linked_head = None
