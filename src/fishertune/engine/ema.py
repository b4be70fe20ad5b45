"""An exponential moving average of the trained weights (optional, ``schedule.ema``)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import Tensor, nn

__all__ = ["WeightAverage"]


class WeightAverage:
    """Shadow copies ``s ← d·s + (1 − d)·θ`` of the parameters that train, updated per step.

    Tensors are tracked from the step they first require gradients (a growing sparse
    selection adds them later; until then the weight is the pretrained one, so the shadow
    starts there). Elements a sparse method never updates keep their value in the shadow too.
    Memory: one copy of every tensor that trains (whole tensors, also for sparse methods).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.model = model
        self.decay = decay
        self.shadow: dict[str, Tensor] = {}

    @torch.no_grad()
    def update(self) -> None:
        """Fold the current weights into the average."""
        for name, param in self.model.named_parameters():
            if not param.requires_grad:
                continue
            shadow = self.shadow.get(name)
            if shadow is None:
                self.shadow[name] = param.detach().clone()
            else:
                shadow.lerp_(param.detach(), 1.0 - self.decay)

    def state(self) -> dict[str, Tensor]:
        """The shadow tensors by parameter name (for checkpoints)."""
        return dict(self.shadow)

    def load(self, state: Mapping[str, Tensor]) -> None:
        """Restore :meth:`state` output."""
        params = dict(self.model.named_parameters())
        unknown = sorted(set(state) - set(params))
        if unknown:
            raise ValueError(f"EMA state for parameters this model lacks: {unknown[:5]}")
        self.shadow = {n: t.to(params[n].device, params[n].dtype).clone() for n, t in state.items()}

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Temporarily put the averaged weights into the model (e.g. for evaluation)."""
        params = dict(self.model.named_parameters())
        saved = {name: params[name].detach().clone() for name in self.shadow}
        with torch.no_grad():
            for name, value in self.shadow.items():
                params[name].copy_(value)
        try:
            yield
        finally:
            with torch.no_grad():
                for name, value in saved.items():
                    params[name].copy_(value)
