"""The estimation stage's output, the checkpoint ``checkpoints/sensitivity``: scores and quality.

A method with an estimation stage (``Tuner.estimates``: FisherTune, ChildTune-D; method.md §8
step 2) scores every candidate element once, after the decoder warm-up. The trainer writes
those scores here once (an atomic, verified checkpoint like the others), with what the stage
measured of their quality (:class:`~fishertune.sensitivity.EstimateQuality`); a resumed run
reads them back instead of estimating again, and the reports (the Fig. 6 heatmap, the study's
sensitivity tables) and ``fishertune sensitivity`` read them from here. The scores are kept
apart from the training checkpoints because they are as large as the candidate weights
(1.1 GB in float32 on ViT-L) and never change after the estimation stage.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from fishertune.engine.checkpoint import load_checkpoint, prefixed, save_checkpoint, tensors_file
from fishertune.sensitivity import EstimateQuality

__all__ = [
    "QUALITY",
    "SCORE_PREFIX",
    "SENSITIVITY",
    "SavedEstimate",
    "estimate_path",
    "read_estimate",
    "save_estimate",
    "saved_quality",
]

SENSITIVITY = "sensitivity"
"""Name of the checkpoint holding the scores, in the run's ``checkpoints`` folder."""
SCORE_PREFIX = "score."
"""Prefix of the score tensors' keys (``score.<parameter name>``)."""
QUALITY = "quality"
"""Key of the estimate's quality in the checkpoint's JSON."""


@dataclass(frozen=True)
class SavedEstimate:
    """What :func:`read_estimate` returns: scores by parameter name, and their quality (None
    in checkpoints written before it was recorded)."""

    scores: dict[str, Tensor]
    quality: EstimateQuality | None


def saved_quality(state: Mapping[str, Any]) -> EstimateQuality | None:
    """The estimate's quality recorded in a sensitivity checkpoint's JSON (None in checkpoints
    written before it was recorded)."""
    raw = state.get(QUALITY)
    return None if raw is None else EstimateQuality.from_dict(raw)


def save_estimate(
    folder: str | Path,
    scores: Mapping[str, Tensor],
    quality: EstimateQuality | None,
    *,
    method: str,
    options: Mapping[str, Any],
) -> None:
    """Write the scores and their quality as ``folder/sensitivity`` (atomically)."""
    save_checkpoint(
        folder,
        SENSITIVITY,
        tensors={SCORE_PREFIX + name: value for name, value in scores.items()},
        state={
            "method": method,
            "options": dict(options),
            QUALITY: None if quality is None else quality.to_dict(),
        },
    )


def read_estimate(folder: str | Path) -> SavedEstimate | None:
    """The scores saved in ``folder`` (verified on load), or None when the run has none."""
    if not (Path(folder) / f"{SENSITIVITY}.json").is_file():
        return None
    tensors, state = load_checkpoint(folder, SENSITIVITY)
    return SavedEstimate(prefixed(tensors, SCORE_PREFIX), saved_quality(state))


def estimate_path(folder: str | Path) -> Path:
    """The tensors file of the saved scores in ``folder``."""
    return tensors_file(folder, SENSITIVITY)
