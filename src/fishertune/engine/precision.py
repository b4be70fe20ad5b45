"""Mixed precision of a run: bf16 autocast on CUDA (``schedule.amp``), fp32 on CPU."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

__all__ = ["autocast"]


def autocast(device: torch.device, amp: str) -> AbstractContextManager[Any]:
    """The precision context of ``schedule.amp`` on ``device``: bf16 autocast on CUDA for
    ``"auto"`` and ``"bf16"``; fp32 (no autocast) for ``"off"`` and on CPU, where ``"bf16"``
    is an error."""
    if device.type == "cuda" and amp in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if amp == "bf16":
        raise ValueError("schedule.amp: 'bf16' needs a CUDA device; use 'auto' or 'off'")
    return nullcontext()
