"""The README's study section shows exactly the committed study (issue 13).

``docs/study/`` holds the full study's ``study.json``, ``study.md`` and figures as measured;
the README's tables between ``<!-- study:NAME -->`` markers must be what
:func:`~fishertune.workflows.study.fill_blocks` makes of that ``study.json``, the verdict
table and every part present, and every figure the README shows must exist.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from fishertune.workflows.study import MARKER, fill_blocks, render_markdown

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "docs" / "study"


def test_the_readme_tables_are_those_of_the_committed_study() -> None:
    study = json.loads((STUDY / "study.json").read_text(encoding="utf-8"))
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert [match.group(2) for match in MARKER.finditer(readme)] == ["verdicts", *study["parts"]]
    assert fill_blocks(readme, study) == readme, (
        "README.md's study blocks differ from docs/study/study.json; refill them with "
        "fishertune.workflows.study.fill_blocks"
    )


def test_the_committed_study_md_and_figures_match_its_record() -> None:
    study = json.loads((STUDY / "study.json").read_text(encoding="utf-8"))
    markdown = (STUDY / "study.md").read_text(encoding="utf-8")
    figures = dict(re.findall(r"!\[([^\]]+)\]\(([^)]+)\)", markdown))
    assert markdown == render_markdown(study, figures)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for path in [*figures.values(), *re.findall(r"\]\((docs/study/[^)]+)\)", readme)]:
        target = STUDY / path if not path.startswith("docs/") else ROOT / path
        assert target.is_file(), path
