"""Progress bars for long computations (rich), off unless asked for."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sized
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")


def track(
    items: Iterable[T], description: str, *, enabled: bool, total: int | None = None
) -> Iterator[T]:
    """Yield ``items``, showing a bar with count and ETA on stderr when ``enabled``.

    ``total`` defaults to ``len(items)`` when the iterable has one (else the bar only counts).
    """
    if not enabled:
        yield from items
        return
    if total is None and isinstance(items, Sized):
        total = len(items)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)


class StepBar:
    """A bar advanced by hand, with a status text (e.g. the loss), on stderr when ``enabled``.

    Use as a context manager; ``completed`` starts the count part-way (a resumed run).
    """

    def __init__(self, description: str, total: int, *, enabled: bool, completed: int = 0) -> None:
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        if enabled:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[status]}"),
                console=Console(stderr=True),
            )
            self._task = self._progress.add_task(
                description, total=total, completed=completed, status=""
            )

    def __enter__(self) -> StepBar:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def advance(self, status: str = "") -> None:
        """Count one step and show ``status`` next to the bar."""
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=1, status=status)

    def describe(self, description: str) -> None:
        """Change the text before the bar (e.g. the stage)."""
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, description=description)
