"""An embedded procedural domain-generalisation benchmark: street scenes in several styles."""

from __future__ import annotations

from fishertune.data.synthetic.dataset import (
    SPLIT_LENGTH,
    SyntheticSettings,
    SyntheticStreets,
    render_sample,
    render_styles,
    scene_seed,
)
from fishertune.data.synthetic.scenes import Light, Scene, SceneObject, generate_scene
from fishertune.data.synthetic.styles import STYLES, TARGET_STYLES, render_style

__all__ = [
    "SPLIT_LENGTH",
    "STYLES",
    "TARGET_STYLES",
    "Light",
    "Scene",
    "SceneObject",
    "SyntheticSettings",
    "SyntheticStreets",
    "generate_scene",
    "render_sample",
    "render_style",
    "render_styles",
    "scene_seed",
]
