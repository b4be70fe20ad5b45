"""``fishertune_demo_vit``: a small timm ViT standing in for a vision foundation model.

Real VFM pretraining (DINOv2, EVA02, …) is out of reach of a CPU demo, so the demo uses a
ViT-Tiny-sized model (patch 8, width 192, depth 6, 3 heads, ≈ 2.7 M parameters) pretrained by
:func:`fishertune.workflows.pretrain_demo.pretrain_demo_backbone` on procedural street scenes
of *every* style with a coarse 7-category pretext. Its features are therefore style-robust
but were never trained on the 19-class task, which is what the FisherTune demo needs: fine-tuning
on the source style alone can keep or destroy that robustness.

The model is registered in timm under :data:`DEMO_VIT_NAME` when this module is imported
(``import fishertune.models`` does it), so every timm-name entry point works, e.g.
``build_segmentor("fishertune_demo_vit", img_size=(64, 128), pretrained=True)``. Its pretrained
config carries the ImageNet mean / std the pretraining normalised with and the 64×128 input
size the position embeddings were trained for. ``pretrained=True`` reads the float16
safetensors file shipped in ``models/weights`` (cast to float32); other image or patch sizes
get timm's resampling of the position and patch embeddings, as for any timm ViT.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors.torch import load_file
from timm.models import build_model_with_cfg, register_model
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from fishertune.models.backbone import PretrainedWeightsUnavailableError

__all__ = [
    "DEMO_ARCHITECTURE",
    "DEMO_IMAGE_SIZE",
    "DEMO_MEAN",
    "DEMO_STD",
    "DEMO_VIT_NAME",
    "demo_vit_weights_path",
    "fishertune_demo_vit",
    "load_demo_vit_weights",
]

DEMO_VIT_NAME = "fishertune_demo_vit"
"""The timm name the demo ViT is registered under."""
DEMO_IMAGE_SIZE: tuple[int, int] = (64, 128)
"""The (H, W) the demo ViT is pretrained and run at."""
DEMO_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
DEMO_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
"""The input normalisation of the demo ViT (ImageNet's; in its timm pretrained config)."""
DEMO_ARCHITECTURE: dict[str, Any] = {
    "img_size": DEMO_IMAGE_SIZE,
    "patch_size": 8,
    "embed_dim": 192,
    "depth": 6,
    "num_heads": 3,
    "num_classes": 0,
}
"""``VisionTransformer`` arguments of the demo ViT (callers may override, e.g. ``img_size``)."""

default_cfgs: dict[str, dict[str, Any]] = {
    DEMO_VIT_NAME: {
        "input_size": (3, *DEMO_IMAGE_SIZE),
        "mean": DEMO_MEAN,
        "std": DEMO_STD,
        "num_classes": 0,
        "interpolation": "bilinear",
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "apache-2.0",
    }
}
"""timm reads this when registering: the pretrained config (normalisation, input size)."""


def demo_vit_weights_path() -> Path:
    """Where the shipped pretrained weights of the demo ViT live."""
    return Path(__file__).parent / "weights" / "demo_vit.safetensors"


def load_demo_vit_weights(model: VisionTransformer) -> None:
    """Load the shipped weights into ``model`` (float16 on disk → the model's dtype).

    Position / patch embeddings are resampled when ``model`` was built for another image or
    patch size. Raises :class:`PretrainedWeightsUnavailableError` when the file is missing.
    """
    path = demo_vit_weights_path()
    if not path.is_file():
        raise PretrainedWeightsUnavailableError(
            f"the pretrained weights of {DEMO_VIT_NAME!r} are missing ({path}); "
            "run `fishertune pretrain-demo-backbone` to create them"
        )
    state = {key: value.float() for key, value in load_file(path).items()}
    model.load_state_dict(checkpoint_filter_fn(state, model))


@register_model
def fishertune_demo_vit(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """The demo ViT (see the module docstring); ``kwargs`` override :data:`DEMO_ARCHITECTURE`."""
    model: VisionTransformer = build_model_with_cfg(
        VisionTransformer, DEMO_VIT_NAME, pretrained=False, **{**DEMO_ARCHITECTURE, **kwargs}
    )
    if pretrained:
        load_demo_vit_weights(model)
    return model
