"""``make bench`` runs scripts that exist and start: each script its recipe names answers
``--help`` (the benchmarks themselves take minutes and are run by hand)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench_scripts() -> list[str]:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    recipe = re.search(r"^bench:.*\n((?:\t.*\n)+)", makefile, flags=re.MULTILINE)
    assert recipe is not None, "the Makefile lost its bench target"
    return re.findall(r"(benchmarks/\S+\.py)", recipe.group(1))


def test_the_bench_target_names_scripts() -> None:
    assert len(_bench_scripts()) >= 4


@pytest.mark.parametrize("script", _bench_scripts())
def test_every_bench_script_exists_and_starts(script: str) -> None:
    path = ROOT / script
    assert path.is_file(), f"make bench runs {script}, which does not exist"
    done = subprocess.run(
        [sys.executable, str(path), "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout
