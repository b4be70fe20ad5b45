"""The run's model: segmentor + tuner from a configuration, and trained models from checkpoints.

A checkpoint stores only what the method changed (:meth:`~fishertune.tuners.Tuner.saved_state`),
so :func:`load_trained` rebuilds the segmentor from the recorded configuration on the same
base weights (their file's SHA-256 is checked when the run used a local file), applies the
method and loads the saved tensors, and the EMA weights when the run kept an average.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fishertune.data.transforms import Compose
from fishertune.engine.batches import evaluation_transform
from fishertune.engine.checkpoint import (
    checkpoint_name,
    load_checkpoint,
    prefixed,
    weights_reference,
)
from fishertune.engine.config import RunConfig, config_from_dict
from fishertune.engine.sharded_eval import eval_protocol
from fishertune.evaluation.protocols import EvalProtocol
from fishertune.models import build_segmentor
from fishertune.models.segmentor import Segmentor
from fishertune.tuners import build_tuner
from fishertune.tuners.base import Tuner, backbone_of, seeded

__all__ = [
    "EMA_PREFIX",
    "MODEL_PREFIX",
    "TrainedModel",
    "build_model",
    "load_trained",
    "resolve_checkpoint",
    "seed_everything",
]

MODEL_PREFIX = "model."
EMA_PREFIX = "ema."


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(config: RunConfig, device: torch.device | str = "cpu") -> tuple[Segmentor, Tuner]:
    """The configured segmentor on ``device`` with the configured method applied.

    Seeds every global generator with ``schedule.seed`` first, so that randomly initialised
    parts (the decoder; the backbone with ``pretrained: false``) are the same in a run and in
    a model rebuilt from its checkpoint. A method with a ``seed`` option (its masks,
    perturbations, sampled labels and estimators' draws) takes ``schedule.seed`` unless the
    options set it.
    """
    seed_everything(config.schedule.seed)
    model = config.model
    segmentor = build_segmentor(
        model.backbone,
        head=model.head,
        num_classes=model.num_classes,
        img_size=model.image_size,
        patch_size=model.patch_size,
        pretrained=model.pretrained,
        checkpoint=model.checkpoint,
        head_options=model.head_options,
        **model.options,
    ).to(device)
    settings = config.method.settings
    if "seed" not in config.method.options:
        settings = seeded(settings, config.schedule.seed)  # the method draws with the run's seed
    tuner = build_tuner(config.method.name, segmentor, settings)
    return segmentor, tuner


@dataclass
class TrainedModel:
    """A segmentor restored from a checkpoint, with its tuner, configuration and run state."""

    config: RunConfig
    segmentor: Segmentor
    tuner: Tuner
    state: dict[str, Any]
    path: Path

    def evaluation_transform(self) -> Compose:
        """The run's evaluation transform: normalisation by the backbone's statistics."""
        backbone = backbone_of(self.segmentor, str(self.path))
        return evaluation_transform(backbone.mean, backbone.std)

    def protocol(self, name: str | None = None, mode: str | None = None) -> EvalProtocol:
        """The run's evaluation protocol, or the registered protocol ``name``, in the run's mode
        or ``mode`` (:func:`~fishertune.engine.sharded_eval.eval_protocol`: a run on the embedded
        benchmark keeps its image size as the default test size whichever protocol is named)."""
        data, evaluation = self.config.data, self.config.evaluation
        return eval_protocol(
            name or evaluation.protocol,
            mode or evaluation.mode,
            source=data.source,
            synthetic=data.synthetic,
        )


def resolve_checkpoint(path: str | Path) -> tuple[Path, str]:
    """``(directory, name)`` of a checkpoint given as its JSON file, its name without suffix,
    or a run directory (its ``best`` checkpoint, else ``last``)."""
    target = Path(path)
    if target.is_dir():
        folder = target / "checkpoints" if (target / "checkpoints").is_dir() else target
        if (folder / "best.json").is_file():
            return folder, "best"
        if (folder / "last.json").is_file():
            print(
                f"notice: {target} has no best checkpoint (its source had no validation set); "
                "using last",
                file=sys.stderr,
            )
            return folder, "last"
        raise FileNotFoundError(f"{target} holds no checkpoint (best.json or last.json)")
    if target.suffix in (".json", ".safetensors"):
        return checkpoint_name(target)
    return target.parent, target.name


def load_trained(
    path: str | Path, *, device: torch.device | str = "cpu", use_ema: bool = True
) -> TrainedModel:
    """Rebuild the model a checkpoint was trained as and load the checkpoint into it."""
    folder, name = resolve_checkpoint(path)
    tensors, state = load_checkpoint(folder, name)
    if "config" not in state or "method" not in state:
        raise ValueError(
            f"{folder / name}.json is not a trained model's checkpoint (it holds no run "
            "configuration; sensitivity.json holds scores); give a run directory or its "
            "checkpoints/best.json or last.json"
        )
    config = config_from_dict(state["config"])
    reference = state.get("weights")
    if reference and reference.get("sha256") and config.model.checkpoint:
        current = weights_reference(config.model.backbone, config.model.checkpoint)
        if current["sha256"] != reference["sha256"]:
            raise ValueError(
                f"{folder / name}.json was trained on base weights {reference['checkpoint']} "
                f"with SHA-256 {reference['sha256']}, but {config.model.checkpoint} now has "
                f"{current['sha256']}"
            )
    segmentor, tuner = build_model(config, device)
    try:
        tuner.load_saved({k: v.to(device) for k, v in prefixed(tensors, MODEL_PREFIX).items()})
    except ValueError as error:
        raise ValueError(f"{folder / name}.json: {error}") from None
    ema = prefixed(tensors, EMA_PREFIX)
    if use_ema and ema:
        params = dict(segmentor.named_parameters())
        with torch.no_grad():
            for key, value in ema.items():
                params[key].copy_(value)
    segmentor.eval()
    return TrainedModel(config, segmentor, tuner, state, folder / f"{name}.json")
