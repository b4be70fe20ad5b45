"""Full fine-tuning and the frozen backbone, the two ends of the paper's Table 1."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from torch import Tensor

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
    _pretrained: dict[str, Tensor] | None = None

    def attach(self, segmentor: Segmentor) -> None:
        segmentor.backbone.requires_grad_(True)

    def keep_pretrained(self) -> None:
        """Copy every backbone parameter to the CPU, as it is now (before tuning).

        The whole backbone once more in host memory, in its own dtype: 1.2 GB for ViT-L in
        float32 (304.2M parameters), about 11 MB for the demo backbone; nothing on the device.
        """
        self._pretrained = {
            name: param.detach().to("cpu", copy=True)
            for name, param in self.segmentor.backbone.named_parameters()
        }

    def pretrained_backbone(self) -> Iterator[tuple[str, Tensor]] | None:
        """The copies :meth:`keep_pretrained` made (None without them)."""
        return None if self._pretrained is None else iter(self._pretrained.items())

    def merge(self) -> None:
        """Nothing to fold: the backbone weights are the tuned ones."""


@register("freeze")
class FreezeTuner(Tuner):
    """The backbone stays frozen; only the decoder trains."""

    def attach(self, segmentor: Segmentor) -> None:
        """Nothing in the backbone trains."""

    def merge(self) -> None:
        """Nothing to fold."""
