"""Fisher-guided sparse fine-tuning of any PyTorch model (nothing of the segmentation package
is needed): :class:`SparseFinetune` with a :class:`FinetuneConfig` estimates, selects, gives
the optimiser and grows the selection; :func:`save_deltas` / :func:`load_deltas` keep only the
trained elements on disk and put them back onto a fresh copy of the base model, bit for bit.
"""

from fishertune.finetune.deltas import DELTAS_FORMAT, load_deltas, save_deltas
from fishertune.finetune.sparse_finetune import ESTIMATORS, FinetuneConfig, SparseFinetune

__all__ = [
    "DELTAS_FORMAT",
    "ESTIMATORS",
    "FinetuneConfig",
    "SparseFinetune",
    "load_deltas",
    "save_deltas",
]
