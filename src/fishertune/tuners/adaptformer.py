"""AdaptFormer (Chen et al., "AdaptFormer: Adapting Vision Transformers for Scalable Visual
Recognition", NeurIPS 2022): a bottleneck in parallel with every block's FFN.

The paper's parallel design (its Eq. 3–4), with the settings of its released image code
(bottleneck 64, ReLU, fixed scale s = 0.1, dropout 0.1 after the activation, "lora" init:
Kaiming-uniform down projection, zero up projection and biases, so training starts from the
pretrained model):

    x_ℓ = x'_ℓ + FFN-branch(x'_ℓ) + s · up(ReLU(down(LN(x'_ℓ))))

where FFN-branch is the block's ``drop_path2(ls2(mlp(norm2(x'))))``. The adapter reads the
FFN's input (the normalised tokens, as in the paper's equation; the released code feeds the
un-normalised x'_ℓ) and its output joins the FFN branch after the block's layer scale and drop
path: DINOv2's LayerScale γ₂ scales only the FFN (the equation has no γ), and stochastic depth
never drops the adapter (as in the released code). On ViT-L (24 × 1024):
24 · (1024·64 + 64 + 64·1024 + 1024) = 3,171,840 trainable elements (3.17M).

The adapter of block i lives at ``blocks.i.adaptformer``; a forward pre-hook on
``blocks.i.mlp`` computes its output from the FFN input and a forward hook on
``blocks.i.drop_path2`` (the end of the FFN branch) adds it, so the pretrained parameter names
are unchanged. timm's ViT (DINOv2, CLIP, MAE), EVA (``SwiGLU`` / ``GluMlp`` FFNs) and SAM blocks
(``(B, H, W, C)`` maps) all have this structure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fishertune.models.segmentor import Segmentor
from fishertune.tuners.base import Tuner, TunerConfig, backbone_of, named_blocks
from fishertune.tuners.registry import register


@dataclass
class AdaptFormerConfig(TunerConfig):
    """AdaptFormer options (defaults: the paper's).

    Attributes:
        bottleneck: hidden width of the adapter.
        scale: s, the fixed factor on the adapter's output.
        dropout: dropout after the ReLU, in training.
    """

    bottleneck: int = 64
    scale: float = 0.1
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.bottleneck < 1:
            raise ValueError(f"adaptformer bottleneck must be at least 1, got {self.bottleneck}")


class ParallelAdapter(nn.Module):
    """``scale · up(dropout(ReLU(down(x))))`` from the FFN input, added at the FFN branch's end.

    Args:
        dim: token width C.
        bottleneck: hidden width.
        scale: fixed output factor.
        dropout: dropout probability after the ReLU.
        reference: a tensor whose device and dtype the adapter takes (a weight of the FFN).
    """

    def __init__(
        self, dim: int, bottleneck: int, scale: float, dropout: float, reference: Tensor
    ) -> None:
        super().__init__()
        device, dtype = reference.device, reference.dtype
        self.down = nn.Linear(dim, bottleneck, device=device, dtype=dtype)
        self.up = nn.Linear(bottleneck, dim, device=device, dtype=dtype)
        self.dropout = nn.Dropout(dropout)
        self.scale = scale
        self._pending: Tensor | None = None
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
            nn.init.zeros_(self.down.bias)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.scale * self.up(self.dropout(F.relu(self.down(x))))
        return out

    def read_ffn_input(self, ffn: nn.Module, args: tuple[Tensor, ...]) -> None:
        """Forward pre-hook for the FFN: compute the adapter's output from the FFN's input."""
        self._pending = self(args[0])

    def add_to_branch(
        self, branch_end: nn.Module, args: tuple[Tensor, ...], output: Tensor
    ) -> Tensor:
        """Forward hook for the end of the FFN branch: add the pending adapter output."""
        added, self._pending = self._pending, None
        if added is None:
            raise RuntimeError("adaptformer: the FFN branch ended without the FFN having run")
        return output + added


@register("adaptformer")
class AdaptFormerTuner(Tuner):
    """A scaled bottleneck adapter in parallel with every FFN (3.17M on ViT-L)."""

    config_class = AdaptFormerConfig
    added_modules = (ParallelAdapter,)
    config: AdaptFormerConfig

    def attach(self, segmentor: Segmentor) -> None:
        config = self.config
        dim = backbone_of(segmentor, self.name).embed_dim
        for index, block in named_blocks(segmentor):
            ffn, branch_end = getattr(block, "mlp", None), getattr(block, "drop_path2", None)
            if not isinstance(ffn, nn.Module) or not isinstance(branch_end, nn.Module):
                raise ValueError(
                    f"adaptformer: block {index} ({type(block).__name__}) lacks the `mlp` and "
                    "`drop_path2` modules of timm's ViT / EVA / SAM blocks"
                )
            adapter = ParallelAdapter(
                dim, config.bottleneck, config.scale, config.dropout, next(ffn.parameters())
            )
            self.add_module(block, "adaptformer", adapter)
            self.keep(ffn.register_forward_pre_hook(adapter.read_ffn_input))
            self.keep(branch_end.register_forward_hook(adapter.add_to_branch))
