"""Vision-foundation-model segmentors: timm ViT backbones, multi-scale neck, heads (§2).

``build_segmentor("vit_large_patch14_dinov2", head="mask2former")`` assembles
:class:`ViTBackbone` → :class:`MultiScaleNeck` → head inside a :class:`Segmentor`;
:func:`parameter_groups` tells which backbone element is Q, K, V, O, FFN1, FFN2, norm or other.
"""

from fishertune.models.backbone import (
    FAMILIES,
    Backbone,
    PretrainedWeightsUnavailableError,
    ViTBackbone,
)
from fishertune.models.build import HEADS, build_segmentor
from fishertune.models.demo_vit import DEMO_VIT_NAME
from fishertune.models.heads import LinearHead, Mask2FormerHead, SegmentationHead
from fishertune.models.neck import MultiScaleNeck
from fishertune.models.parameter_groups import (
    CANDIDATE_KINDS,
    KINDS,
    ParameterGroup,
    count_by_kind,
    group_slices,
    parameter_groups,
)
from fishertune.models.segmentor import Segmentor
from fishertune.models.weights import CheckpointError, LoadReport

__all__ = [
    "CANDIDATE_KINDS",
    "DEMO_VIT_NAME",
    "FAMILIES",
    "HEADS",
    "KINDS",
    "Backbone",
    "CheckpointError",
    "LinearHead",
    "LoadReport",
    "Mask2FormerHead",
    "MultiScaleNeck",
    "ParameterGroup",
    "PretrainedWeightsUnavailableError",
    "SegmentationHead",
    "Segmentor",
    "ViTBackbone",
    "build_segmentor",
    "count_by_kind",
    "group_slices",
    "parameter_groups",
]
