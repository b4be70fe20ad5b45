"""Every "method.md §N" that the code, the tests and the documents cite resolves to a section of
the repository's own ``docs/method.md``."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CITATION = re.compile(r"method\.md[ \u00a0]?(?:§|section )\s?(\d+)")
HEADING = re.compile(r"^## (\d+)\. ", re.MULTILINE)


def _cited() -> dict[int, list[str]]:
    where: dict[int, list[str]] = {}
    files = [ROOT / "README.md", ROOT / "DEVELOPERS.md"]
    for folder in ("src", "tests", "benchmarks", "configs", "docs"):
        files += [p for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".md", ".yaml")]
    for path in files:
        for match in CITATION.finditer(path.read_text(encoding="utf-8")):
            where.setdefault(int(match.group(1)), []).append(str(path.relative_to(ROOT)))
    return where


def test_every_cited_section_exists() -> None:
    text = (ROOT / "docs" / "method.md").read_text(encoding="utf-8")
    sections = {int(n) for n in HEADING.findall(text)}
    assert sections == set(range(1, 12))
    cited = _cited()
    assert len(cited) >= 10  # the code cites most sections; a broken pattern finds none
    missing = {n: files[:3] for n, files in cited.items() if n not in sections}
    assert not missing, f"cited sections missing from docs/method.md: {missing}"


def test_the_pattern_finds_citations_and_their_numbers() -> None:
    found = [int(m.group(1)) for m in CITATION.finditer("see method.md §5 and method.md §11.")]
    assert found == [5, 11]
