"""The one markdown table of intervals: a row per method or arm, a column per number.

Every table of means over seeds and of paired differences (``fishertune compare``'s report,
``study.md``, the README's study blocks) is drawn by :func:`interval_markdown`, so that a cell
reads the same everywhere: ``mean ± half-width`` (:meth:`~fishertune.evaluation.intervals.
Interval.format`), ``*`` after a paired difference whose interval excludes 0, ``-`` where a row
has no such number.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from fishertune.evaluation.intervals import Interval

__all__ = ["interval_markdown"]


def _percent_cell(column: str, interval: Interval) -> str:
    return interval.format()


def interval_markdown(
    rows: Mapping[str, Mapping[str, Interval]],
    corner: str,
    *,
    cell: Callable[[str, Interval], str] = _percent_cell,
    header: Callable[[str], str] = str,
    lead: tuple[str, Mapping[str, str]] | None = None,
    mark: bool = False,
) -> str:
    """Markdown: ``corner`` above the row labels, then (``lead``: a header and a cell per
    row, e.g. the trainable parameters) a column per number in first-seen order, titled by
    ``header``; ``cell(column, interval)`` writes a number (default: ×100, two decimals),
    ``mark`` adds `` *`` where the interval excludes 0."""
    columns = list(dict.fromkeys(column for row in rows.values() for column in row))
    titles = [corner, *([lead[0]] if lead else []), *(header(c) for c in columns)]
    lines = ["| " + " | ".join(titles) + " |", "| --- |" + " ---: |" * (len(titles) - 1)]
    for label, row in rows.items():
        cells = [lead[1][label]] if lead else []
        for column in columns:
            if column not in row:
                cells.append("-")
                continue
            text = cell(column, row[column])
            cells.append(f"{text} *" if mark and row[column].excludes_zero else text)
        lines.append("| " + " | ".join([label, *cells]) + " |")
    return "\n".join(lines)
