"""Assemble a segmentor from names: backbone → neck → head (the one-call entry point)."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

from fishertune.models.backbone import ViTBackbone
from fishertune.models.heads.linear import LinearHead
from fishertune.models.heads.mask2former import Mask2FormerHead
from fishertune.models.neck import MultiScaleNeck
from fishertune.models.segmentor import Segmentor

HEADS = ("linear", "mask2former")


def build_segmentor(
    backbone: str,
    *,
    head: str = "linear",
    num_classes: int = 19,
    neck_mode: str = "resize",
    neck_channels: int | None = None,
    out_indices: tuple[int, ...] | None = None,
    img_size: int | tuple[int, int] = 512,
    patch_size: int | None = None,
    pretrained: bool = False,
    checkpoint: str | Path | None = None,
    strict: bool = True,
    head_options: dict[str, Any] | None = None,
    **backbone_options: Any,
) -> Segmentor:
    """A :class:`Segmentor` for a timm VFM name.

    ``head="linear"`` is the DINOv2 linear probe (fast, the CPU default); ``"mask2former"`` is the
    paper's decoder (deformable pixel decoder + masked-attention transformer, Rein's losses).
    The neck's output width defaults to the backbone's for the linear head and to the head's
    hidden size (256) for Mask2Former. ``head_options`` go to the head's constructor and
    ``backbone_options`` to :class:`ViTBackbone` (e.g. ``depth``/``embed_dim`` for tiny models).
    """
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    vit = ViTBackbone(
        backbone,
        out_indices=out_indices,
        img_size=img_size,
        patch_size=patch_size,
        pretrained=pretrained,
        checkpoint=checkpoint,
        strict=strict,
        **backbone_options,
    )
    options = dict(head_options or {})
    if head == "linear":
        channels = neck_channels or vit.embed_dim
        neck = MultiScaleNeck(
            vit.embed_dim, channels, num_inputs=len(vit.out_indices), mode=neck_mode
        )
        decoder: LinearHead | Mask2FormerHead = LinearHead(
            neck.out_channels, num_classes, **options
        )
    else:
        channels = neck_channels or int(options.get("hidden_dim", 256))
        neck = MultiScaleNeck(
            vit.embed_dim, channels, num_inputs=len(vit.out_indices), mode=neck_mode
        )
        decoder = Mask2FormerHead(neck.out_channels, num_classes, **options)
    return Segmentor(vit, neck, decoder)


_SET_BY_THE_RUN = frozenset(
    {
        "backbone",
        "head",
        "num_classes",
        "img_size",
        "patch_size",
        "pretrained",
        "checkpoint",
        "head_options",
        "model_name",
    }
)
"""build_segmentor's arguments that a run configuration sets through its own keys."""
_TIMM_CLASSES = {
    "timm.models.vision_transformer": "VisionTransformer",
    "timm.models.eva": "Eva",
    "timm.models.vision_transformer_sam": "VisionTransformerSAM",
    "fishertune.models.demo_vit": "VisionTransformer",
}
"""The model class behind each timm module that serves the paper's VFM families."""


def _keywords(function: Any) -> set[str]:
    return {
        name
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
    }


def backbone_option_names(backbone: str) -> set[str] | None:
    """The keys ``model.options`` may hold for ``backbone``: build_segmentor's and
    ViTBackbone's own keywords and the timm model class's; None for a timm model whose class
    is not known here (its options are then checked when it is built)."""
    import timm

    import fishertune.models.demo_vit  # noqa: F401  (registers the demo backbone with timm)

    try:
        entry = timm.models.model_entrypoint(backbone.split(".")[0])
    except RuntimeError:
        return None
    class_name = _TIMM_CLASSES.get(entry.__module__)
    if class_name is None:
        return None
    model_class = getattr(importlib.import_module(entry.__module__), class_name)
    names = _keywords(build_segmentor) | _keywords(ViTBackbone.__init__) | _keywords(model_class)
    return names - _SET_BY_THE_RUN - {"self"}


def head_option_names(head: str) -> set[str]:
    """The keys ``model.head_options`` may hold for ``head``."""
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    cls = LinearHead if head == "linear" else Mask2FormerHead
    return _keywords(cls.__init__) - {"self", "in_channels", "num_classes"}
