"""A trained run as one standalone file (``fishertune export``), and back as a segmentor.

:func:`export_model` loads a run's checkpoint (EMA weights where the run kept them), folds the
method into the backbone's own weights where the method allows it (full fine-tuning, the
sparse methods and FisherTune already train the backbone's weights; LoRA's low-rank updates
are added to them) and writes every tensor of the segmentor with the model configuration
into one checked safetensors file (format, SHA-256, atomic). A method that adds modules
(Rein, VPT, AdaptFormer, VQT) keeps them, and the file names the method so that they are
rebuilt. :func:`load_exported` needs that file alone: no run folder, no base weights (the
backbone is built without pretrained weights and every tensor comes from the file).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from fishertune.engine.config import config_from_dict
from fishertune.engine.tuned_model import build_model, load_trained
from fishertune.finetune.checked_file import load_checked, save_checked
from fishertune.models import Segmentor

__all__ = ["EXPORT_FORMAT", "Export", "export_model", "load_exported"]

EXPORT_FORMAT = "fishertune-model/1"
"""The ``format`` metadata entry of an exported model."""
MERGED_METHOD = "freeze"
"""The method an exported model is rebuilt with once its method is folded into the weights
(one that adds nothing to the segmentor)."""


@dataclass(frozen=True)
class Export:
    """What :func:`export_model` wrote.

    Attributes:
        path: the file.
        method: the run's method.
        merged: whether the method was folded into the backbone's weights (else its modules
            are in the file and the loader rebuilds them).
        tensors: how many tensors the file holds.
    """

    path: Path
    method: str
    merged: bool
    tensors: int


def export_model(run: str | Path, path: str | Path, *, use_ema: bool = True) -> Export:
    """Write the segmentor of the run (or checkpoint) ``run`` to ``path`` (see the module)."""
    trained = load_trained(run, use_ema=use_ema)
    method = trained.config.method.name
    try:
        trained.tuner.merge()
        merged = True
    except NotImplementedError:
        merged = False
    data = trained.config.to_dict()
    data["model"].update(pretrained=False, checkpoint=None)
    if merged:
        data["method"] = {"name": MERGED_METHOD, "options": {}}
    tensors = {k: v.detach().cpu().contiguous() for k, v in trained.segmentor.state_dict().items()}
    target = save_checked(
        path,
        tensors,
        EXPORT_FORMAT,
        {"config": json.dumps(data), "method": method, "merged": str(merged).lower()},
    )
    return Export(target, method, merged, len(tensors))


def load_exported(path: str | Path, *, device: torch.device | str = "cpu") -> Segmentor:
    """The segmentor an exported file holds, in eval mode on ``device``; one line naming the
    file for a missing, foreign or damaged one."""
    tensors, metadata = load_checked(path, EXPORT_FORMAT, "exported model")
    config = config_from_dict(json.loads(metadata["config"]))
    segmentor, _ = build_model(config, device)
    missing, unexpected = segmentor.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path}: its tensors do not fit the model it describes "
            f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
        )
    segmentor.eval()
    return segmentor
