"""One wrapper over timm for the paper's five VFMs (DINOv2, EVA02, CLIP, SAM, MAE) and any ViT."""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlparse

import timm
import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import try_to_load_from_cache
from timm.models import get_pretrained_cfg
from torch import Tensor, nn

from fishertune.models.weights import LoadReport, load_weights

logger = logging.getLogger(__name__)

FAMILIES = {
    "dinov2": "vit_{small,base,large,giant}_patch14_dinov2 (also *_reg4_dinov2)",
    "eva02": "eva02_{tiny,small,base,large}_patch14_*",
    "clip": "vit_{base,large,huge}_patch{14,16}_clip_*",
    "sam": "samvit_{base,large,huge}_patch16",
    "mae": "vit_{base,large,huge}_patch{14,16}_224.mae",
}
"""The paper's five VFM families and the timm model names that serve them."""

_REIN_INDICES_24 = (7, 11, 15, 23)


class PretrainedWeightsUnavailableError(RuntimeError):
    """timm could not fetch a pretrained tag (e.g. offline) and no local file was given."""


def default_out_indices(depth: int) -> tuple[int, ...]:
    """Rein's blocks (7, 11, 15, 23) for 24 blocks, scaled to other depths.

    For depth L: round(L · k / 24) − 1 for k in (8, 12, 16, 24), e.g. (3, 5, 7, 11) for 12
    blocks and (10, 15, 20, 31) for 32; deduplicated for very shallow models.
    """
    picked = sorted({max(0, round(depth * (k + 1) / 24) - 1) for k in _REIN_INDICES_24})
    return tuple(picked)


@runtime_checkable
class Backbone(Protocol):
    """What the tuners and the trainer read of a segmentor's backbone (:class:`ViTBackbone`
    has it all). ``isinstance(module, Backbone)`` checks that the attributes exist."""

    model: Any
    """The timm model."""
    embed_dim: int
    patch_size: int
    out_indices: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def num_prefix_tokens(self) -> int:
        """Class and register tokens ahead of the patch tokens."""
        ...

    @property
    def maps_inside(self) -> bool:
        """Whether the blocks carry ``(B, H, W, C)`` maps (SAM) instead of token sequences."""
        ...

    @property
    def token_entry(self) -> nn.Module:
        """The module whose output is the tokens entering the first block (where the
        simulated domain shift of method.md §4 is applied)."""
        ...

    @property
    def blocks(self) -> nn.Sequential:
        """The transformer blocks."""
        ...


class ViTBackbone(nn.Module):
    """A timm ViT returning feature maps ``(B, C, H/p, W/p)`` from chosen blocks.

    Args:
        model_name: any timm ViT name (see :data:`FAMILIES`); a pretrained tag after a dot
            (``vit_large_patch14_dinov2.lvd142m``) selects the weights timm downloads.
        out_indices: blocks whose outputs are returned (default :func:`default_out_indices`);
            blocks after the last one are dropped, and so are the final norm and head.
        img_size: the size the position embeddings are built for; any input whose sides are
            multiples of the patch size works (embeddings are interpolated on the fly).
        patch_size: resample the patch embedding to this size (e.g. 14 → 16 as Rein does),
            using timm's resampling of the patch and position embeddings when weights load.
        pretrained: download the pretrained tag through timm (needs the network or timm's cache).
        checkpoint: a local ``.pth`` / ``.bin`` / ``.safetensors`` file (timm layout, or an
            official layout timm's filters convert); read without unpickling code.
        strict: fail on missing / unexpected / mismatched checkpoint keys (else load what fits).
        **model_kwargs: passed to ``timm.create_model`` (e.g. ``depth``, ``embed_dim`` for tiny
            test models, ``drop_path_rate``).

    The normalisation constants of the pretrained config travel with the model as
    ``mean`` / ``std`` (tuples) and non-persistent buffers used by :meth:`normalize`.
    """

    def __init__(
        self,
        model_name: str,
        *,
        out_indices: Sequence[int] | None = None,
        img_size: int | tuple[int, int] = 512,
        patch_size: int | None = None,
        pretrained: bool = False,
        checkpoint: str | Path | None = None,
        strict: bool = True,
        **model_kwargs: Any,
    ) -> None:
        super().__init__()
        kwargs: dict[str, Any] = {"num_classes": 0, "img_size": img_size, **model_kwargs}
        if patch_size is not None:
            kwargs["patch_size"] = patch_size
        if not model_name.startswith("samvit"):
            kwargs.setdefault("dynamic_img_size", True)
        self.model_name = model_name
        # timm models are typed as plain modules; their ViT attributes are accessed dynamically.
        self.model: Any = _create(model_name, pretrained and checkpoint is None, kwargs)
        depth = len(self.model.blocks)
        indices = tuple(out_indices) if out_indices is not None else default_out_indices(depth)
        if not indices or any(not 0 <= i < depth for i in indices):
            raise ValueError(
                f"out_indices must lie in [0, {depth - 1}] for {model_name}, got {indices}"
            )
        self.out_indices = indices
        full = set(self.model.state_dict())
        self.model.prune_intermediate_layers(list(indices), prune_norm=True, prune_head=True)
        self.load_report: LoadReport | None = None
        if checkpoint is not None:
            dropped = full - set(self.model.state_dict())
            self.load_report = load_weights(self.model, checkpoint, strict=strict, dropped=dropped)
        self.embed_dim: int = int(self.model.embed_dim)
        patch = self.model.patch_embed.patch_size
        self.patch_size: int = int(patch[0] if isinstance(patch, (tuple, list)) else patch)
        cfg = self.model.pretrained_cfg
        self.mean: tuple[float, ...] = tuple(
            float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406))
        )
        self.std: tuple[float, ...] = tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225)))
        self.register_buffer(
            "pixel_mean", torch.tensor(self.mean).view(1, -1, 1, 1), persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(self.std).view(1, -1, 1, 1), persistent=False
        )

    @property
    def num_prefix_tokens(self) -> int:
        """Class and register tokens ahead of the patch tokens (0 for SAM)."""
        return int(getattr(self.model, "num_prefix_tokens", 0))

    @property
    def maps_inside(self) -> bool:
        """Whether the blocks carry ``(B, H, W, C)`` maps (SAM) instead of token sequences."""
        return self.model_name.startswith("samvit")

    @property
    def token_entry(self) -> nn.Module:
        """timm's ``norm_pre`` (identity, or the pre-norm applied right before the blocks):
        its output is the tokens entering the first block, where the simulated domain shift
        of method.md §4 is applied."""
        entry = getattr(self.model, "norm_pre", None)
        if not isinstance(entry, nn.Module):
            raise ValueError(
                f"{self.model_name}: the feature perturbation needs a timm model with `norm_pre`"
            )
        return entry

    @property
    def blocks(self) -> nn.Sequential:
        """The transformer blocks (the candidates of method.md §2 live here)."""
        blocks: nn.Sequential = self.model.blocks
        return blocks

    def normalize(self, images: Tensor) -> Tensor:
        """Map images in [0, 1] to the pretrained model's input statistics."""
        mean, std = self.get_buffer("pixel_mean"), self.get_buffer("pixel_std")
        return (images - mean.to(images.dtype)) / std.to(images.dtype)

    def forward(self, images: Tensor) -> list[Tensor]:
        """Feature maps ``(B, embed_dim, H/p, W/p)`` of the ``out_indices`` blocks.

        ``images`` are already normalised and their sides are multiples of ``patch_size``.
        """
        height, width = images.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"{self.model_name}: input size {height}×{width} is not a multiple of the patch "
                f"size {self.patch_size} (pad the images, e.g. with Segmentor.predict)"
            )
        features: list[Tensor] = self.model.forward_intermediates(
            images, indices=list(self.out_indices), output_fmt="NCHW", intermediates_only=True
        )
        return features


HUB_PROBE_SECONDS = 3.0
"""How long :func:`_hub_reachable` waits for a connection to the Hugging Face Hub."""
_HUB_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


def _hub_weights_cached(model_name: str) -> bool:
    """Whether timm's Hugging Face cache already holds the model's weights (``True`` also for
    models whose weights do not come from the Hub, e.g. the demo ViT)."""
    hub_id = getattr(get_pretrained_cfg(model_name), "hf_hub_id", None)
    if not hub_id:
        return True
    return any(isinstance(try_to_load_from_cache(hub_id, name), str) for name in _HUB_FILES)


def _hub_reachable() -> bool:
    """Whether the Hugging Face Hub answers within :data:`HUB_PROBE_SECONDS` (``False`` at once
    in offline mode), so that a machine without network fails now instead of after timm's
    retries."""
    if hf_constants.HF_HUB_OFFLINE:
        return False
    host = urlparse(hf_constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=HUB_PROBE_SECONDS).close()
    except OSError:
        return False
    return True


def _weights_help(model_name: str) -> str:
    return (
        "On a machine with internet access, run once "
        f"`python -c \"import timm; timm.create_model('{model_name}', pretrained=True)\"` "
        "to fill timm's Hugging Face cache, or download the checkpoint and pass "
        "checkpoint=PATH (.pth, .bin or .safetensors)."
    )


def _create(model_name: str, pretrained: bool, kwargs: dict[str, Any]) -> Any:
    """``timm.create_model`` with a clear message when pretrained weights cannot be fetched
    (at once when they are not cached and the Hub cannot be reached)."""
    if model_name.split(".")[0] not in timm.list_models():
        raise ValueError(
            f"unknown timm model {model_name!r}; ViT families served: "
            + "; ".join(f"{k}: {v}" for k, v in FAMILIES.items())
        )
    if pretrained and not _hub_weights_cached(model_name) and not _hub_reachable():
        raise PretrainedWeightsUnavailableError(
            f"the pretrained weights of {model_name!r} are not in timm's Hugging Face cache "
            f"and {hf_constants.ENDPOINT} cannot be reached. {_weights_help(model_name)}"
        )
    try:
        model = timm.create_model(model_name, pretrained=pretrained, **kwargs)
    except PretrainedWeightsUnavailableError:
        raise  # already says what to do (e.g. the demo backbone's missing weights file)
    except (OSError, RuntimeError, ValueError) as error:
        if not pretrained:
            raise
        raise PretrainedWeightsUnavailableError(
            f"could not fetch the pretrained weights of {model_name!r} through timm ({error}). "
            + _weights_help(model_name)
        ) from error
    return model
