"""Sparse masked optimiser: AdamW on selected elements only, state ∝ selected elements (§7).

- :class:`SparseAdamW`: ``torch.optim.AdamW`` on the True elements of per-parameter masks,
  no change at all to the others, per-element steps so that a growing selection starts each
  new element as a fresh AdamW.
- :func:`index_dtype`: the dtype of a tensor's flat element indices (int32 when it fits).
"""

from __future__ import annotations

from fishertune.optim.sparse_adamw import SparseAdamW, index_dtype

__all__ = ["SparseAdamW", "index_dtype"]
