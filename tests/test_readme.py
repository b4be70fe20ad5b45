"""The code examples marked ``<!-- tested: ... -->`` in the README and in
docs/how_it_works.md run as written, in order, each file in its own namespace."""

from __future__ import annotations

import re
from pathlib import Path

from fishertune.finetune import SparseFinetune
from fishertune.selection import Selection

ROOT = Path(__file__).resolve().parents[1]


def _run_examples(path: Path) -> dict[str, object]:
    text = path.read_text(encoding="utf-8")
    blocks = re.findall(r"<!-- tested:[^\n]*-->\n```python\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) >= 2, f"{path.name} lost its examples"
    namespace: dict[str, object] = {}
    for block in blocks:
        exec(compile(block, str(path), "exec"), namespace)
    return namespace


def test_readme_examples_run() -> None:
    namespace = _run_examples(ROOT / "README.md")
    tuner = namespace["tuner"]  # the Trainer example's: grown to δ_max by its last step
    assert isinstance(tuner, SparseFinetune)
    assert tuner.selection is not None
    assert tuner.selection.count == round(0.05 * tuner.total)
    assert (Path(namespace["args"].output_dir) / "fishertune_deltas.safetensors").is_file()  # type: ignore[attr-defined]


def test_how_it_works_examples_run() -> None:
    namespace = _run_examples(ROOT / "docs" / "how_it_works.md")
    selection = namespace["selection"]
    scores = namespace["scores"]
    assert isinstance(selection, Selection)
    assert isinstance(scores, dict)
    assert set(selection) == set(scores)


def test_the_readme_is_a_guide_and_every_link_resolves() -> None:
    """At most 300 lines; every relative link of the README and the docs pages names a file."""
    readme = ROOT / "README.md"
    assert len(readme.read_text(encoding="utf-8").splitlines()) <= 300
    pages = [readme, *sorted((ROOT / "docs").glob("*.md"))]
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.DOTALL)
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if not target.startswith(("http://", "https://")):
                assert (page.parent / target).exists(), f"{page.name}: {target}"


def test_license_and_citation_agree_with_the_package() -> None:
    import tomllib
    import yaml

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["license"] == "Apache-2.0"
    assert "Apache License" in (ROOT / "LICENSE").read_text(encoding="utf-8")
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert citation["license"] == "Apache-2.0"
    assert citation["version"] == project["version"]
    assert citation["preferred-citation"]["year"] == 2025
    assert {"cff-version", "message", "title", "authors"} <= set(citation)
