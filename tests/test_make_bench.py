"""``make bench`` runs scripts that exist and start: each script its recipe names answers
``--help`` (the benchmarks themselves take minutes at their sizes and are run by hand; the
sparse-step benchmark also runs here at a tiny size, for what it prints)."""

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


def test_sparse_adamw_benchmark_prints_both_ratios_from_one_run() -> None:
    """Issue 23: one run prints the state ratio and the step-time ratio (tiny sizes here)."""
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "sparse_adamw.py"),
            *("--blocks", "1", "--dim", "32", "--warmup", "0", "--steps", "2"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert re.search(r"^state ratio sparse/dense = \d+\.\d%", done.stdout, re.MULTILINE)
    assert re.search(r"^step time ratio sparse/dense = \d+\.\d\dx", done.stdout, re.MULTILINE)
    assert "glibc keeps freed memory" in done.stdout or "allocator left as it is" in done.stdout
