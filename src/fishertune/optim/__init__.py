"""Sparse optimiser: AdamW on selected elements only, state ∝ selected elements (§7).

- :class:`SparseAdamW`: ``torch.optim.AdamW`` on the elements of a
  :class:`~fishertune.selection.Selection`, no change at all to the others, per-element steps
  so that a growing selection starts each new element as a fresh AdamW; on CPU a fused C
  kernel compiled on first use (:func:`fused_kernel_status` says whether it is in use).
"""

from __future__ import annotations

from fishertune.optim.sparse_adamw import SparseAdamW, fused_kernel_status

__all__ = ["SparseAdamW", "fused_kernel_status"]
