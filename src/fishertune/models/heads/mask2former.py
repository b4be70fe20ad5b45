"""The paper's segmentation decoder: Mask2Former on a ViT's multi-scale features.

FisherTune trains Rein's decode head (Wei et al., "Stronger, Fewer, & Superior", CVPR 2024):
Mask2Former (Cheng et al., CVPR 2022) with a multi-scale deformable-attention pixel decoder
(6 encoder layers), a masked-attention transformer decoder (9 layers), 100 queries and 256
channels, trained with Hungarian matching and point-sampled mask losses and auxiliary losses
after every decoder layer (:mod:`.mask2former_loss`). The network is built from transformers'
Mask2Former modules; their deformable attention is the pure-PyTorch ``grid_sample`` version (no
custom CUDA kernel, nothing downloaded).

Feature levels: of the neck's maps at strides 4, 8, 16, 32, transformers' pixel decoder feeds the
three coarsest (32, 16, 8) to the deformable encoder and fuses the stride-4 map through one FPN
level into the per-pixel mask features; the transformer decoder's masked cross-attention cycles
through the encoder outputs at strides 32, 16, 8. Masks are predicted at stride 4.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import Mask2FormerConfig
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerPixelDecoder,
    Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention,
    Mask2FormerTransformerModule,
)

from fishertune.label_space import IGNORE_INDEX

from .mask2former_loss import MaskClassificationLoss, semantic_to_mask_targets

FEATURE_STRIDES = (4, 8, 16, 32)


class Mask2FormerHead(nn.Module):
    """Mask2Former decode head implementing :class:`~.base.SegmentationHead`.

    Args:
        in_channels: channels of the four input maps (strides 4, 8, 16, 32, finest first).
        num_classes: semantic classes (19 for Cityscapes); the head adds a no-object class.
        ignore_index: label of unlabelled pixels (255).
        hidden_dim: channels of the pixel decoder, mask features and queries (256).
        num_queries: learned queries (100).
        pixel_decoder_layers: deformable-attention encoder layers of the pixel decoder (6).
        decoder_layers: masked-attention transformer decoder layers (9); the loss sees
            ``decoder_layers + 1`` predictions (one before the first layer, one after each).
        num_heads: attention heads of both transformers (8).
        pixel_decoder_ffn_dim: feed-forward width of the pixel decoder's encoder (1024).
        decoder_ffn_dim: feed-forward width of the transformer decoder (2048).
        class_weight, mask_weight, dice_weight: weights of the cross-entropy, point BCE and dice
            losses and of the matching costs (Rein: 2.0, 5.0, 5.0).
        no_object_weight: cross-entropy weight of the no-object class (0.1).
        train_num_points: points sampled per mask for matching and mask losses (12544).
        oversample_ratio, importance_sample_ratio: point sampling (3.0, 0.75).
        ignore_pixels: ``"background"`` (default, the paper's setting): ignored pixels are a
            negative of every mask, as in Rein's mmseg head and transformers' semantic
            pipeline; ``"exclude"``: they count in no mask loss or matching cost.
        target_sampling: how target masks are read at the sampled points, ``"bilinear"``
            (default, as Mask2Former, mmdet and transformers) or ``"nearest"``.

    ``losses`` returns ``loss_cls``, ``loss_mask`` and ``loss_dice``, each summed over all
    decoder stages (auxiliary and final) with the weights applied; the objective is their sum.
    ``predict`` returns Σ_q softmax(class_q)[k] · sigmoid(mask_q)(x) (no-object dropped), the
    mask logits upsampled bilinearly to ``image_size`` before the sigmoid.

    External queries (Rein's query link): ``queries`` ``(B, Q, C)`` or ``(Q, C)`` replaces the
    learned query features (the decoder's initial content) and ``query_pos`` the learned query
    positional embeddings, each independently, with ``Q = num_queries`` and ``C = hidden_dim``.
    Rein passes its linked tokens as ``query_pos`` and a linear map of them as ``queries``; the
    learned embedding that is replaced then gets no gradient.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        *,
        ignore_index: int = IGNORE_INDEX,
        hidden_dim: int = 256,
        num_queries: int = 100,
        pixel_decoder_layers: int = 6,
        decoder_layers: int = 9,
        num_heads: int = 8,
        pixel_decoder_ffn_dim: int = 1024,
        decoder_ffn_dim: int = 2048,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        no_object_weight: float = 0.1,
        train_num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        ignore_pixels: Literal["exclude", "background"] = "background",
        target_sampling: Literal["bilinear", "nearest"] = "bilinear",
    ) -> None:
        super().__init__()
        if len(in_channels) != len(FEATURE_STRIDES):
            raise ValueError(f"need channels of {len(FEATURE_STRIDES)} maps, got {in_channels}")
        if hidden_dim % 32 or hidden_dim % num_heads:
            raise ValueError("hidden_dim must be a multiple of 32 (GroupNorm) and of num_heads")
        if decoder_layers < 1:
            raise ValueError("decoder_layers must be at least 1")
        if ignore_pixels not in ("exclude", "background"):
            raise ValueError(
                f"ignore_pixels must be 'exclude' or 'background', not {ignore_pixels}"
            )
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.in_channels = tuple(in_channels)
        self.hidden_dim = hidden_dim
        self.num_queries = num_queries
        self.ignore_pixels = ignore_pixels
        config = Mask2FormerConfig(
            feature_size=hidden_dim,
            mask_feature_size=hidden_dim,
            hidden_dim=hidden_dim,
            encoder_layers=pixel_decoder_layers,
            encoder_feedforward_dim=pixel_decoder_ffn_dim,
            # transformers counts the query read-out before the first layer as a layer
            decoder_layers=decoder_layers + 1,
            dim_feedforward=decoder_ffn_dim,
            num_attention_heads=num_heads,
            num_queries=num_queries,
            dropout=0.0,  # Mask2Former's; transformers also uses it as decoder layer-drop
            pre_norm=False,
            common_stride=FEATURE_STRIDES[0],
            feature_strides=FEATURE_STRIDES,
        )
        self.pixel_decoder = Mask2FormerPixelDecoder(config, feature_channels=list(in_channels))
        self.transformer = Mask2FormerTransformerModule(in_features=hidden_dim, config=config)
        self.class_predictor = nn.Linear(hidden_dim, num_classes + 1)
        self.criterion = MaskClassificationLoss(
            num_classes,
            class_weight=class_weight,
            mask_weight=mask_weight,
            dice_weight=dice_weight,
            no_object_weight=no_object_weight,
            num_points=train_num_points,
            oversample_ratio=oversample_ratio,
            importance_sample_ratio=importance_sample_ratio,
            target_sampling=target_sampling,
        )
        self._init_weights()

    def _init_weights(self) -> None:
        """Mask2Former's initialisation, which transformers applies only inside its PreTrainedModel:
        Xavier for the transformers' matrices, Deformable-DETR's sampling-offset grid, caffe2
        Xavier for the pixel decoder's convolutions, N(0, 1) level embeddings; the rest (query
        embeddings, prediction layers, norms) keeps PyTorch's defaults."""
        for block in (self.pixel_decoder.encoder, self.transformer.decoder.layers):
            for param in block.parameters():
                if param.dim() > 1:
                    nn.init.xavier_uniform_(param)
        for module in self.pixel_decoder.modules():
            if isinstance(module, Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention):
                _init_deformable_attention(module)
            elif isinstance(module, nn.Conv2d):
                nn.init.kaiming_uniform_(module.weight, a=1)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.pixel_decoder.level_embed)

    def forward(
        self,
        features: list[Tensor],
        queries: Tensor | None = None,
        query_pos: Tensor | None = None,
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Class logits ``(B, Q, K + 1)`` and mask logits ``(B, Q, H/4, W/4)`` of every decoder
        stage, first (before the first layer) to last."""
        if len(features) != len(self.in_channels) or any(
            f.dim() != 4 or f.shape[1] != c for f, c in zip(features, self.in_channels, strict=True)
        ):
            shapes = [tuple(f.shape) for f in features]
            raise ValueError(f"expected 4 maps (B, C, H, W) with C = {self.in_channels}: {shapes}")
        pixel = self.pixel_decoder(features, return_dict=True)
        multi_scale: tuple[Tensor, ...] = pixel.multi_scale_features  # strides 32, 16, 8
        transformer = self.transformer
        # Mask2FormerTransformerModule.forward always reads its learned queries, so its input
        # preparation is done here with the queries chosen by the caller.
        memory, positions, sizes = [], [], []
        levels = zip(multi_scale, transformer.input_projections, strict=True)
        for index, (level, projection) in enumerate(levels):
            position = transformer.position_embedder(level.shape, level.device, level.dtype)
            embedded = projection(level).flatten(2) + transformer.level_embed.weight[index, :, None]
            positions.append(position.flatten(2).permute(2, 0, 1))
            memory.append(embedded.permute(2, 0, 1))
            sizes.append(level.shape[-2:])
        batch = features[0].shape[0]
        decoded = transformer.decoder(
            inputs_embeds=self._query_input(queries, transformer.queries_features.weight, batch),
            multi_stage_positional_embeddings=positions,
            pixel_embeddings=pixel.mask_features,
            encoder_hidden_states=memory,
            query_position_embeddings=self._query_input(
                query_pos, transformer.queries_embedder.weight, batch
            ),
            feature_size_list=sizes,
            output_attentions=False,
            output_hidden_states=False,
            return_dict=True,
        )
        class_logits = [
            self.class_predictor(hidden.transpose(0, 1))
            for hidden in decoded.intermediate_hidden_states
        ]
        return class_logits, list(decoded.masks_queries_logits)

    def _query_input(self, supplied: Tensor | None, learned: Tensor, batch: int) -> Tensor:
        """``(Q, B, C)`` decoder input from supplied ``(B, Q, C)``/``(Q, C)`` or learned queries."""
        chosen = learned if supplied is None else supplied
        if chosen.dim() == 2:
            chosen = chosen.unsqueeze(0).expand(batch, -1, -1)
        if chosen.shape != (batch, self.num_queries, self.hidden_dim):
            raise ValueError(
                f"queries must be ({batch}, {self.num_queries}, {self.hidden_dim}) or "
                f"({self.num_queries}, {self.hidden_dim}), got {tuple(chosen.shape)}"
            )
        return chosen.transpose(0, 1)

    def losses(
        self,
        features: list[Tensor],
        targets: Tensor,
        *,
        queries: Tensor | None = None,
        query_pos: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """``loss_cls``, ``loss_mask``, ``loss_dice`` for ``(B, H, W)`` label maps, each summed
        over the decoder stages (auxiliary losses included) and weighted."""
        class_logits, mask_logits = self(features, queries, query_pos)
        mask_targets = semantic_to_mask_targets(
            targets,
            self.num_classes,
            self.ignore_index,
            exclude_ignored=self.ignore_pixels == "exclude",
        )
        losses: dict[str, Tensor] = self.criterion(class_logits, mask_logits, mask_targets)
        return losses

    def predict(
        self,
        features: list[Tensor],
        image_size: tuple[int, int],
        *,
        queries: Tensor | None = None,
        query_pos: Tensor | None = None,
    ) -> Tensor:
        """Semantic scores ``(B, num_classes, H, W)``: class probabilities times mask
        probabilities summed over the queries (Mask2Former's semantic inference)."""
        class_logits, mask_logits = self(features, queries, query_pos)
        class_probs = class_logits[-1].softmax(-1)[..., :-1]
        masks = F.interpolate(
            mask_logits[-1], size=image_size, mode="bilinear", align_corners=False
        )
        return torch.einsum("bqk,bqhw->bkhw", class_probs, masks.sigmoid())


@torch.no_grad()
def _init_deformable_attention(
    module: Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention,
) -> None:
    """Deformable DETR's initialisation: zero offset weights, offset biases on a ring of
    directions (one per head, growing with the point index), uniform attention weights."""
    heads, levels, points = module.n_heads, module.n_levels, module.n_points
    angles = torch.arange(heads, dtype=torch.float32) * (2.0 * math.pi / heads)
    grid = torch.stack([angles.cos(), angles.sin()], -1)
    grid = grid / grid.abs().max(-1, keepdim=True).values
    grid = grid.view(heads, 1, 1, 2).repeat(1, levels, points, 1)
    grid = grid * torch.arange(1, points + 1, dtype=torch.float32).view(1, 1, points, 1)
    nn.init.zeros_(module.sampling_offsets.weight)
    module.sampling_offsets.bias.copy_(grid.flatten())
    nn.init.zeros_(module.attention_weights.weight)
    nn.init.zeros_(module.attention_weights.bias)
    for linear in (module.value_proj, module.output_proj):
        nn.init.xavier_uniform_(linear.weight)
        nn.init.zeros_(linear.bias)
