"""The run report (``report.md``) and the paper's Table-1-style method comparison."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePath
from types import MappingProxyType
from typing import Any

import yaml

from fishertune.atomic import atomic_write
from fishertune.evaluation.domains import AVERAGE_HEADER, DomainResults, target_average
from fishertune.evaluation.intervals import Interval, Row, column_intervals, paired_columns
from fishertune.reporting.interval_table import interval_markdown

_NO_TABLES: Mapping[str, str] = MappingProxyType({})


def percent(value: float) -> str:
    """A fraction as a percentage with two decimals, ``-`` for NaN (table cells)."""
    return "-" if math.isnan(value) else f"{100 * value:.2f}"


def _source_label(name: str, source: str | None) -> str:
    """A column's header: the source domain marked "(source)" unless it is called so."""
    return f"{name} (source)" if name == source and name != "source" else name


def _columns(results: Sequence[DomainResults], source_domain: str | None) -> tuple[list[str], str]:
    """The target domains in first-seen order, and the source column name ('' if none)."""
    seen = dict.fromkeys(name for r in results for name in r.domains)
    source = source_domain if source_domain is not None and source_domain in seen else ""
    return [name for name in seen if name != source_domain], source


def _target_average(results: DomainResults, targets: Sequence[str]) -> float:
    """:func:`~fishertune.evaluation.domains.target_average` over the table's ``targets``:
    NaN when the run misses one of them, so that every row averages the same domains."""
    miou = {t: results.domains[t].miou if t in results.domains else math.nan for t in targets}
    return target_average(miou, source=None)


def _comparison(
    results: Mapping[str, DomainResults], source_domain: str | None, *, bold: bool
) -> str:
    targets, source = _columns(list(results.values()), source_domain)
    names = [source, *targets] if source else targets
    header = ["Method", *(_source_label(n, source) for n in names), AVERAGE_HEADER]
    table = [
        [
            *(r.domains[n].miou if n in r.domains else math.nan for n in names),
            _target_average(r, targets),
        ]
        for r in results.values()
    ]
    cells = [[percent(v) for v in row] for row in table]
    if bold:
        for col in range(len(header) - 1):
            finite = [row[col] for row in table if not math.isnan(row[col])]
            if not finite:
                continue
            best = percent(max(finite))
            for row in cells:
                if row[col] == best:
                    row[col] = f"**{best}**"
    lines = [
        "| " + " | ".join(header) + " |",
        "| --- |" + " ---: |" * (len(header) - 1),
        *(
            "| " + " | ".join([method, *row]) + " |"
            for method, row in zip(results, cells, strict=True)
        ),
    ]
    return "\n".join(lines)


def comparison_table(results: Mapping[str, DomainResults], source_domain: str | None) -> str:
    """Table 1 of the paper as markdown: a row per method (the mapping's keys).

    Columns are the source domain (marked "(source)", first, when some result has it), every
    other domain in first-seen order, and ``Avg. (targets)``: the mean mIoU over the target
    domains only, "-" for a method missing one of them. Values are mIoU ×100 with two
    decimals ("-" for NaN); the best value of each column is in bold when more than one
    method is compared (ties are all bold).
    """
    return _comparison(results, source_domain, bold=len(results) > 1)


SeedRuns = Mapping[str, Sequence[DomainResults]]
"""Per method, the results of its runs, one per seed, in the same seed order for every method."""


def seed_intervals(runs: SeedRuns, source_domain: str | None) -> dict[str, dict[str, Interval]]:
    """Per method and column (the source, every target, ``Avg. (targets)``), the mean mIoU over
    seeds with its 95% Student-t half-width (method.md §11)."""
    return {
        method: column_intervals(rows) for method, rows in _seed_rows(runs, source_domain).items()
    }


def paired_intervals(
    runs: SeedRuns, reference: str, source_domain: str | None
) -> dict[str, dict[str, Interval]]:
    """Per method other than ``reference`` and per column, the mean per-seed difference to
    ``reference`` with its 95% half-width (method.md §11)."""
    rows = _seed_rows(runs, source_domain)
    if reference not in rows:
        raise ValueError(
            f"--reference: {reference!r} is not among the compared methods {list(rows)}"
        )
    return {
        method: paired_columns(method_rows, rows[reference])
        for method, method_rows in rows.items()
        if method != reference
    }


def interval_table(runs: SeedRuns, source_domain: str | None) -> str:
    """mIoU (%) per method and column as ``mean ± half-width`` over the seeds (markdown)."""
    intervals = seed_intervals(runs, source_domain)
    seeds = len(next(iter(runs.values()), []))
    return _interval_markdown(
        intervals, f"Method: mIoU (%), mean ± 95% CI over {seeds} seeds", source_domain, mark=False
    )


def paired_table(runs: SeedRuns, reference: str, source_domain: str | None) -> str:
    """Per method, its per-seed difference to ``reference`` in mIoU points, ``mean ±
    half-width``, with ``*`` where the interval excludes 0 (markdown)."""
    intervals = paired_intervals(runs, reference, source_domain)
    return _interval_markdown(
        intervals, f"Method − {reference}: mIoU points, paired over seeds", source_domain, mark=True
    )


def _seed_rows(runs: SeedRuns, source_domain: str | None) -> dict[str, list[Row]]:
    """Per method, one row per seed: the mIoU of every compared domain (NaN where the run
    lacks it) and the target average."""
    everything = [r for results in runs.values() for r in results]
    targets, source = _columns(everything, source_domain)
    names = [source, *targets] if source else targets
    counts = {len(results) for results in runs.values()}
    if len(counts) > 1:
        raise ValueError(f"every method needs the same seeds; got {sorted(counts)} runs")
    return {
        method: [
            {
                **{name: r.domains[name].miou if name in r.domains else math.nan for name in names},
                AVERAGE_HEADER: _target_average(r, targets),
            }
            for r in results
        ]
        for method, results in runs.items()
    }


def _interval_markdown(
    intervals: Mapping[str, Mapping[str, Interval]],
    corner: str,
    source_domain: str | None,
    *,
    mark: bool,
) -> str:
    return interval_markdown(
        intervals, corner, header=lambda column: _source_label(column, source_domain), mark=mark
    )


def _plain(value: Any) -> Any:
    """``value`` with mappings as dicts, sequences as lists and paths as strings for YAML."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, PurePath):
        return str(value)
    return value


def _link(run_dir: Path, figure: str | Path) -> str:
    """``figure`` relative to ``run_dir`` (POSIX), in angle brackets when it has spaces."""
    relative = Path(os.path.relpath(Path(figure).absolute(), run_dir.absolute())).as_posix()
    return f"<{relative}>" if any(c.isspace() or c in "()" for c in relative) else relative


def _summary(results: DomainResults | None, source_domain: str | None) -> str:
    if results is None:
        return "No evaluation results were recorded for this run."
    targets = [name for name in results.domains if name != source_domain]
    facts = []
    if source_domain is not None and source_domain in results.domains:
        facts.append(f"source {source_domain} {percent(results.domains[source_domain].miou)}")
    average = percent(_target_average(results, targets))
    facts.append(f"mean over {len(targets)} unseen target domain(s) {average}")
    head = f"`{results.method}` under protocol `{results.protocol.name}`"
    return f"{head}: mIoU (%) " + "; ".join(facts) + "."


def write_report(
    run_dir: str | Path,
    *,
    title: str,
    config: Mapping[str, Any],
    results: DomainResults | None,
    source_domain: str | None,
    figures: Mapping[str, str | Path],
    notes: Sequence[str] = (),
    extra_tables: Mapping[str, str] = _NO_TABLES,
    summary: str | None = None,
) -> Path:
    """Write ``run_dir/report.md`` atomically and return its path.

    Sections: the title, a one-line summary, the results (mIoU per domain with the source
    first and the average over the unseen target domains only, then IoU per class), each of
    ``extra_tables`` (title → markdown) as its own section, each figure under its caption
    (``figures`` maps captions to image paths, absolute or relative to the working directory,
    linked relative to ``run_dir``), the notes as bullets and last the configuration as a YAML
    block. ``summary`` replaces the one-line summary derived from ``results`` (e.g. for
    a comparison of several runs). Sections without content (no results, figures, notes) are
    left out. The text
    goes to a temporary file in ``run_dir`` that replaces ``report.md`` in one step.
    """
    directory = Path(run_dir)
    directory.mkdir(parents=True, exist_ok=True)
    config_yaml = yaml.safe_dump(_plain(config), sort_keys=False, allow_unicode=True)
    sections = [
        f"# {title}",
        summary if summary is not None else _summary(results, source_domain),
    ]
    if results is not None:
        targets, _ = _columns([results], source_domain)
        sections.append(
            "## Results\n\n"
            f"### mIoU per domain (%); {AVERAGE_HEADER} is over the {len(targets)} unseen "
            "target domain(s) only\n\n"
            f"{_comparison({results.method: results}, source_domain, bold=False)}\n\n"
            f"### IoU per class (%)\n\n{results.class_table()}"
        )
    sections.extend(f"## {name}\n\n{table.strip()}" for name, table in extra_tables.items())
    if figures:
        sections.append(
            "## Figures\n\n"
            + "\n\n".join(
                f"### {caption}\n\n![{caption}]({_link(directory, path)})"
                for caption, path in figures.items()
            )
        )
    if notes:
        sections.append("## Notes\n\n" + "\n".join(f"- {note}" for note in notes))
    sections.append(f"## Configuration\n\n```yaml\n{config_yaml}```")
    text = "\n\n".join(sections) + "\n"

    target = directory / "report.md"
    atomic_write(target, lambda path: path.write_text(text, encoding="utf-8"))
    return target
