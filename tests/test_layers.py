"""The README's data-flow sentence holds: every subpackage imports only from layers below it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "fishertune"

LAYERS = (
    ("label_space", "progress", "atomic", "process_group"),
    ("data", "selection"),
    ("evaluation", "optim", "sensitivity", "models"),
    ("tuners", "finetune"),
    ("engine",),
    ("reporting",),
    ("workflows",),
    ("cli",),
)
"""Bottom to top, as the README's Layout section and docs/architecture.md state them."""


def _layer(part: str) -> int:
    for rank, members in enumerate(LAYERS):
        if part in members:
            return rank
    raise AssertionError(f"fishertune.{part} is in no layer: add it to LAYERS and the README")


def _imports(path: Path) -> set[str]:
    """The fishertune subpackages (first name after ``fishertune.``) that ``path`` imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found |= {name.split(".")[1] for name in names if name.startswith("fishertune.")}
    return found


def test_every_import_goes_down_the_layers() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).parts
        if parts == ("__init__.py",):
            continue
        own = parts[0].removesuffix(".py")
        for other in _imports(path) - {own}:
            if _layer(other) >= _layer(own):
                wrong.append(f"{path.relative_to(PACKAGE)} imports fishertune.{other}")
    assert not wrong, wrong


def test_the_layers_name_every_subpackage() -> None:
    present = {
        p.name.removesuffix(".py")
        for p in PACKAGE.iterdir()
        if (p.is_dir() and (p / "__init__.py").exists())
        or (p.suffix == ".py" and p.stem != "__init__")
    }
    listed = {name for members in LAYERS for name in members}
    assert present == listed
