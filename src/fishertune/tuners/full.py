"""Full fine-tuning and the frozen backbone, the two ends of the paper's Table 1."""

from __future__ import annotations

from dataclasses import dataclass

from fishertune.models.segmentor import Segmentor
from fishertune.tuners.base import Tuner, TunerConfig
from fishertune.tuners.registry import register


@dataclass
class FullConfig(TunerConfig):
    """Full fine-tuning; Rein's setting scales the backbone learning rate by 0.1."""

    backbone_lr_mult: float = 0.1


@register("full")
class FullTuner(Tuner):
    """Every backbone parameter trains (304.2M on DINOv2-L)."""

    config_class = FullConfig

    def attach(self, segmentor: Segmentor) -> None:
        segmentor.backbone.requires_grad_(True)

    def merge(self) -> None:
        """Nothing to fold: the backbone weights are the tuned ones."""


@register("freeze")
class FreezeTuner(Tuner):
    """The backbone stays frozen; only the decoder trains."""

    def attach(self, segmentor: Segmentor) -> None:
        """Nothing in the backbone trains."""

    def merge(self) -> None:
        """Nothing to fold."""
