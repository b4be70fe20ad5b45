"""The README and docs/study_results.md show exactly the committed studies (issues 13, 21, 24).

``docs/study/`` holds the full study's ``study.json``, ``study.md`` and figures as measured, and
``docs/study/selection/`` the ``selection`` part's (a study of its own, issue 21); the tables
between ``<!-- study:NAME -->`` markers must be what
:func:`~fishertune.reporting.study_report.fill_blocks` makes of those records: the README's
verdict table, and in docs/study_results.md the verdict table and every part; every figure
either shows must exist.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from fishertune.reporting.study_report import MARKER, fill_blocks, render_markdown

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "docs" / "study"
STUDIES = (STUDY, STUDY / "selection")


def _record(folder: Path) -> dict[str, Any]:
    record: dict[str, Any] = json.loads((folder / "study.json").read_text(encoding="utf-8"))
    return record


RESULTS = ROOT / "docs" / "study_results.md"


def test_the_tables_are_those_of_the_committed_studies() -> None:
    first, *more = (_record(folder) for folder in STUDIES)
    parts = [name for record in (first, *more) for name in record["parts"]]
    for document, blocks in ((ROOT / "README.md", ["verdicts"]), (RESULTS, ["verdicts", *parts])):
        text = document.read_text(encoding="utf-8")
        assert [match.group(2) for match in MARKER.finditer(text)] == blocks, document.name
        assert fill_blocks(text, first, *more) == text, (
            f"{document.name}'s study blocks differ from docs/study/**/study.json; refill them "
            "with fishertune.reporting.study_report.fill_blocks (DEVELOPERS.md)"
        )


@pytest.mark.parametrize("folder", STUDIES, ids=lambda p: p.name)
def test_the_committed_study_md_and_figures_match_its_record(folder: Path) -> None:
    study = _record(folder)
    markdown = (folder / "study.md").read_text(encoding="utf-8")
    figures = dict(re.findall(r"!\[([^\]]+)\]\(([^)]+)\)", markdown))
    assert markdown == render_markdown(study, figures)
    for path in figures.values():
        assert (folder / path).is_file(), path


def test_every_study_figure_shown_exists() -> None:
    shown = re.findall(r"\]\((study/[^)]+)\)", RESULTS.read_text(encoding="utf-8"))
    assert shown
    for path in shown:
        assert (ROOT / "docs" / path).is_file(), path
    for path in re.findall(r"\]\((docs/study/[^)]+)\)", (ROOT / "README.md").read_text()):
        assert (ROOT / path).is_file(), path
