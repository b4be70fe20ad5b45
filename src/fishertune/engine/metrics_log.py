"""The run's metric log: one CSV file and TensorBoard scalars, written by rank 0 only.

``metrics.csv`` has a fixed header chosen when the run starts (step, stage, loss, lr,
trainable, grad_norm, seconds and one ``miou/<domain>`` column per evaluated domain plus
``miou/targets``); a training row leaves the mIoU cells empty, an evaluation row the training
cells. A resumed run first drops the rows after the checkpoint's step, so the log of an
interrupted and resumed run equals that of an uninterrupted one. TensorBoard event files go to
``tensorboard/`` (purged after the resume step as well).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter

from fishertune.atomic import atomic_write

__all__ = ["TRAIN_COLUMNS", "MetricsLog"]

TRAIN_COLUMNS = ("step", "stage", "loss", "lr", "trainable", "grad_norm", "seconds")


class MetricsLog:
    """Append rows to ``run_dir/metrics.csv`` and TensorBoard; does nothing when disabled."""

    def __init__(
        self,
        run_dir: Path,
        domains: Sequence[str],
        *,
        enabled: bool,
        resume_step: int | None = None,
    ) -> None:
        self.path = run_dir / "metrics.csv"
        self.columns = [*TRAIN_COLUMNS, *(f"miou/{d}" for d in domains), "miou/targets"]
        self.enabled = enabled
        self._writer: SummaryWriter | None = None
        if not enabled:
            return
        if resume_step is None or not self.path.exists():
            with self.path.open("w", newline="", encoding="utf-8") as file:
                csv.writer(file).writerow(self.columns)
        else:
            self._truncate(resume_step)
        self._writer = SummaryWriter(
            str(run_dir / "tensorboard"),
            purge_step=None if resume_step is None else resume_step + 1,
        )

    def _truncate(self, step: int) -> None:
        """Keep the header and the rows up to ``step`` (atomic rewrite)."""
        with self.path.open(newline="", encoding="utf-8") as file:
            rows = list(csv.reader(file))
        if not rows or rows[0] != self.columns:
            raise ValueError(
                f"{self.path}: its columns {rows[0] if rows else []} differ from this run's "
                f"{self.columns}; resume with the run's own configuration"
            )
        kept = [rows[0], *(row for row in rows[1:] if int(float(row[0])) <= step)]

        def write(path: Path) -> None:
            with path.open("w", newline="", encoding="utf-8") as file:
                csv.writer(file).writerows(kept)

        atomic_write(self.path, write)

    def write(self, step: int, values: Mapping[str, Any]) -> None:
        """One row at ``step``; numeric values also go to TensorBoard."""
        if not self.enabled:
            return
        unknown = set(values) - set(self.columns)
        if unknown:
            raise KeyError(f"metrics {sorted(unknown)} are not columns of {self.path}")
        row = {**values, "step": step}
        with self.path.open("a", newline="", encoding="utf-8") as file:
            csv.writer(file).writerow(["" if row.get(c) is None else row[c] for c in self.columns])
        assert self._writer is not None
        for key, value in values.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                self._writer.add_scalar(key, value, step)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Scalars outside the CSV's columns (e.g. the estimate's quality), TensorBoard only."""
        if self._writer is None:
            return
        for key, value in values.items():
            self._writer.add_scalar(key, value, step)

    def close(self) -> None:
        """Flush and close TensorBoard."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
