"""Fisher-guided sparse fine-tuning of any PyTorch model (nothing of the segmentation package
is needed): :class:`SparseFinetune` with a :class:`FinetuneConfig` estimates, selects, gives
the optimiser and grows the selection; :class:`FisherTuneCallback` does it inside
``transformers.Trainer``; :func:`save_deltas` / :func:`load_deltas` keep only the trained
elements on disk and put them back onto a fresh copy of the base model, bit for bit.
"""

from typing import Any

from fishertune.finetune.deltas import DELTAS_FORMAT, load_deltas, save_deltas
from fishertune.finetune.sparse_finetune import (
    ESTIMATORS,
    STATE_FORMAT,
    FinetuneConfig,
    SparseFinetune,
)

__all__ = [
    "DELTAS_FORMAT",
    "ESTIMATORS",
    "STATE_FORMAT",
    "FinetuneConfig",
    "FisherTuneCallback",
    "SparseFinetune",
    "load_deltas",
    "save_deltas",
]


def __getattr__(name: str) -> Any:
    """``FisherTuneCallback`` on first use: importing transformers takes seconds."""
    if name == "FisherTuneCallback":
        from fishertune.finetune.trainer_callback import FisherTuneCallback

        return FisherTuneCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
