"""The README's code examples marked ``<!-- tested: ... -->`` run as written, in order."""

from __future__ import annotations

import re
from pathlib import Path

from fishertune.finetune import SparseFinetune
from fishertune.selection import Selection

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run() -> None:
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"<!-- tested:[^\n]*-->\n```python\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) >= 2, "the README lost its examples"
    namespace: dict[str, object] = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    tuner = namespace["tuner"]
    assert isinstance(tuner, SparseFinetune)
    assert tuner.selection is not None
    assert tuner.selection.count == round(0.05 * tuner.total)  # grown to δ_max by step 20
    selection = namespace["selection"]
    scores = namespace["scores"]
    assert isinstance(selection, Selection)
    assert isinstance(scores, dict)
    assert set(selection) == set(scores)
