"""Loading backbone weights from local files safely, with a report of what did not fit."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

logger = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
_CONTAINER_KEYS = ("model", "state_dict", "model_state", "module", "teacher")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or does not fit the model."""


@dataclass
class LoadReport:
    """Keys of a checkpoint load that did not match the model one to one."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """True when every model key was loaded and nothing was left over."""
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self, limit: int = 10) -> str:
        """A readable summary listing up to ``limit`` keys per kind."""

        def cut(items: list[str]) -> str:
            more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
            return ", ".join(items[:limit]) + more

        lines = []
        if self.missing:
            lines.append(f"missing in the checkpoint ({len(self.missing)}): {cut(self.missing)}")
        if self.unexpected:
            lines.append(
                f"unexpected in the checkpoint ({len(self.unexpected)}): {cut(self.unexpected)}"
            )
        if self.mismatched:
            shapes = [f"{k} {tuple(a)} vs model {tuple(b)}" for k, a, b in self.mismatched]
            lines.append(f"shape mismatch ({len(shapes)}): {cut(shapes)}")
        return "\n".join(lines) if lines else "all keys matched"


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a ``.safetensors`` / ``.pth`` / ``.pt`` / ``.bin`` file, never unpickling code.

    PyTorch files are read with ``torch.load(weights_only=True)``; a top-level container
    (``{"model": ...}``, ``{"state_dict": ...}``, DINOv2's ``{"teacher": ...}``) is unwrapped and
    a ``module.`` prefix from DataParallel is removed.
    """
    file = Path(path)
    if file.suffix not in CHECKPOINT_SUFFIXES:
        raise CheckpointError(
            f"{file}: unsupported checkpoint type {file.suffix!r}; expected one of "
            f"{', '.join(CHECKPOINT_SUFFIXES)}"
        )
    if not file.is_file():
        raise CheckpointError(f"{file}: checkpoint file not found")
    try:
        if file.suffix == ".safetensors":
            raw: Any = load_file(str(file))
        else:
            raw = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"{file}: cannot read checkpoint ({error})") from error
    for key in _CONTAINER_KEYS:
        if isinstance(raw, Mapping) and key in raw and isinstance(raw[key], Mapping):
            raw = raw[key]
            break
    if not isinstance(raw, Mapping) or not all(isinstance(v, Tensor) for v in raw.values()):
        raise CheckpointError(f"{file}: expected a mapping of parameter names to tensors")
    return {_strip(str(k)): v for k, v in raw.items()}


def _strip(key: str) -> str:
    for prefix in ("module.", "backbone."):
        if key.startswith(prefix):
            key = key[len(prefix) :]
    return key


def timm_filter(model: nn.Module) -> Callable[[dict[str, Tensor], nn.Module], dict[str, Tensor]]:
    """The ``checkpoint_filter_fn`` of the timm module defining ``model``'s class.

    timm's filters convert official layouts (DINOv2, EVA02, SAM, OpenCLIP) to timm's and
    resample position and patch embeddings to the model's sizes.
    """
    module = sys.modules[type(model).__module__]
    found: Callable[[dict[str, Tensor], nn.Module], dict[str, Tensor]] | None = getattr(
        module, "checkpoint_filter_fn", None
    )
    if found is None:
        return lambda state, _: state
    return found


def load_weights(
    model: nn.Module,
    path: str | Path,
    *,
    strict: bool = True,
    dropped: Collection[str] = (),
) -> LoadReport:
    """Load a checkpoint file into a timm model and report what did not fit.

    ``dropped`` names keys of parts removed from the model on purpose (blocks after the last
    used one, the final norm and head): present in the file, they are not "unexpected".

    With ``strict`` any missing, unexpected or shape-mismatched key raises
    :class:`CheckpointError` naming the file and the keys; otherwise the matching tensors are
    loaded, the rest is logged as a warning and returned in the report.
    """
    raw = read_state_dict(path)
    try:
        state = timm_filter(model)(raw, model)
    except Exception as error:
        raise CheckpointError(
            f"{path}: checkpoint layout not understood for {type(model).__name__} ({error})"
        ) from error
    own = model.state_dict()
    report = LoadReport(
        missing=sorted(k for k in own if k not in state),
        unexpected=sorted(k for k in state if k not in own and k not in dropped),
        mismatched=[
            (k, tuple(v.shape), tuple(own[k].shape))
            for k, v in sorted(state.items())
            if k in own and v.shape != own[k].shape
        ],
    )
    if not report.clean and strict:
        raise CheckpointError(
            f"{path}: checkpoint does not fit {type(model).__name__} "
            f"(pass strict=False to load what fits)\n{report.describe()}"
        )
    bad = {k for k, _, _ in report.mismatched}
    usable = {k: v for k, v in state.items() if k in own and k not in bad}
    model.load_state_dict(usable, strict=False)
    if not report.clean:
        logger.warning("loaded %s partially:\n%s", path, report.describe())
    return report
