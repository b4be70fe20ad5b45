"""A training run's checkpoints: what ``last`` and ``best`` hold, writing them and resuming.

The trainer's loop (:mod:`fishertune.engine.trainer`) owns the steps; this module owns what
survives a kill. A training checkpoint (atomic, verified on load, never unpickled:
:mod:`fishertune.engine.checkpoint`) holds the tuner's saved state (only what the method
changed), the optimiser's state with the stage it belongs to, the EMA shadow, the random
generators' states, the step, the stage clocks, the best source-validation result so far and
the run's configuration. ``best`` is kept by source validation mIoU (selecting on the unseen
targets would leak them). A run resumes from the newest complete one of ``last`` and ``best``,
and only under the configuration it was written with (:meth:`RunConfig.identity`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fishertune.engine.checkpoint import (
    capture_rng_state,
    flatten_optimizer_state,
    latest_checkpoint,
    load_checkpoint,
    prefixed,
    restore_rng_state,
    save_checkpoint,
    unflatten_optimizer_state,
    weights_reference,
)
from fishertune.engine.config import RunConfig
from fishertune.engine.ema import WeightAverage
from fishertune.engine.tuned_model import EMA_PREFIX, MODEL_PREFIX
from fishertune.tuners.base import Tuner

__all__ = [
    "CHECKPOINTS",
    "RESUMABLE",
    "LoopState",
    "Restored",
    "RunCheckpoints",
    "has_checkpoint",
]

CHECKPOINTS = "checkpoints"
"""The run folder's subfolder of checkpoints."""
RESUMABLE = ("last", "best")
"""The training checkpoints ``--resume`` chooses from (the newest complete one)."""
_TRAINING_STATE = ("step", "config", "best", "stage_seconds", "rng")
"""Keys every training checkpoint's state holds (see :meth:`RunCheckpoints.save`)."""


def has_checkpoint(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a complete checkpoint a run can resume from."""
    return latest_checkpoint(Path(run_dir) / CHECKPOINTS, names=RESUMABLE) is not None


@dataclass
class LoopState:
    """What the training loop carries from step to step and a checkpoint keeps.

    Attributes:
        step: optimisation steps done.
        best: ``{"step", "source_miou"}`` of the best source validation so far (None before
            the first evaluation with a source validation set).
        stage_seconds: time spent in each stage's optimisation steps (and the estimation).
    """

    step: int = 0
    best: dict[str, Any] | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def improves(self, source_miou: float) -> bool:
        """Record ``source_miou`` at the current step as the best if it beats the best so far;
        whether it did (then ``best`` is due)."""
        if self.best is not None and not source_miou > self.best["source_miou"]:
            return False
        self.best = {"step": self.step, "source_miou": source_miou}
        return True


@dataclass
class Restored:
    """A checkpoint read back by :meth:`RunCheckpoints.restore`: the loop's state, and the
    optimiser's stage and state (None when the checkpoint had no optimiser)."""

    loop: LoopState
    optimizer_stage: str | None
    optimizer_state: dict[str, Any] | None
    rng: dict[str, Any]
    tensors: dict[str, Tensor]


class RunCheckpoints:
    """Writing and reading one run's training checkpoints.

    ``enabled``: whether this process writes (rank 0 of a distributed run); every rank reads.
    """

    def __init__(
        self,
        run_dir: Path,
        config: RunConfig,
        tuner: Tuner,
        ema: WeightAverage | None,
        *,
        enabled: bool,
    ) -> None:
        self.folder = run_dir / CHECKPOINTS
        self.config = config
        self.tuner = tuner
        self.ema = ema
        self.enabled = enabled

    def save(
        self,
        name: str,
        loop: LoopState,
        *,
        stage: str,
        optimizer: torch.optim.Optimizer | None,
        optimizer_stage: str,
    ) -> None:
        """Write checkpoint ``name`` (``stage``: that of the last step done)."""
        if not self.enabled:
            return
        config = self.config
        tensors = {MODEL_PREFIX + k: v for k, v in self.tuner.saved_state().items()}
        state: dict[str, Any] = {
            "step": loop.step,
            "stage": stage,
            "config": config.to_dict(),
            "method": self.tuner.name,
            "weights": weights_reference(config.model.backbone, config.model.checkpoint),
            "best": loop.best,
            "stage_seconds": loop.stage_seconds,
            "trainable": self.tuner.trainable_now(),
        }
        if optimizer is not None:
            optimizer_tensors, optimizer_state = flatten_optimizer_state(optimizer.state_dict())
            tensors.update(optimizer_tensors)
            state["optimizer"] = {"stage": optimizer_stage, "state": optimizer_state}
        if self.ema is not None:
            tensors.update({EMA_PREFIX + k: v for k, v in self.ema.state().items()})
        rng_tensors, rng_state = capture_rng_state(self.tuner.generators())
        tensors.update(rng_tensors)
        state["rng"] = rng_state
        save_checkpoint(self.folder, name, tensors=tensors, state=state)

    def restore(self, device: torch.device) -> Restored | None:
        """Read the newest complete training checkpoint, refusing one written under another
        configuration, and load the method's state and the EMA from it; None (nothing loaded)
        when the run has none. The caller rebuilds the optimiser from the result and then
        calls :meth:`restore_rng`, so that nothing drawn on the way shifts the generators."""
        name = latest_checkpoint(self.folder, names=RESUMABLE)
        if name is None:
            return None
        tensors, state = load_checkpoint(self.folder, name)
        path = self.folder / f"{name}.json"
        missing = sorted(set(_TRAINING_STATE) - set(state))
        if missing:
            raise ValueError(f"cannot resume {path}: its state lacks the keys {missing}")
        saved_config = state["config"]
        changed = sorted(
            f"{section}.{key}"
            for section, values in self.config.identity().items()
            for key, value in values.items()
            if saved_config.get(section, {}).get(key) != value
        )
        if changed:
            raise ValueError(f"cannot resume {path}: the configuration differs in {changed}")
        model_state = {k: v.to(device) for k, v in prefixed(tensors, MODEL_PREFIX).items()}
        try:
            self.tuner.load_saved(model_state)
        except ValueError as error:
            raise ValueError(f"cannot resume {path}: {error}") from None
        if self.ema is not None:
            self.ema.load(prefixed(tensors, EMA_PREFIX))
        record = state.get("optimizer")
        loop = LoopState(int(state["step"]), state["best"], dict(state["stage_seconds"]))
        return Restored(
            loop,
            None if record is None else str(record["stage"]),
            None if record is None else unflatten_optimizer_state(tensors, record["state"]),
            state["rng"],
            tensors,
        )

    def restore_rng(self, restored: Restored) -> None:
        """Put the random generators (torch, numpy, Python, the method's own) back in the
        checkpoint's states."""
        restore_rng_state(restored.tensors, restored.rng, self.tuner.generators())
