"""`fishertune demo`: its preset file and the --quick smoke test of the whole pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fishertune.cli import main
from fishertune.engine.config import load_config
from fishertune.workflows.demo import DEMO_METHODS, demo_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_the_preset_file_is_the_demo_configuration() -> None:
    assert load_config(CONFIGS / "demo.yaml") == demo_config()
    quick = demo_config(quick=True)
    assert quick.total_steps < demo_config().total_steps
    assert quick.model == demo_config().model


def test_quick_demo_runs_every_method_and_writes_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    for method in DEMO_METHODS:
        assert f"| {method} |" in printed
        assert (out / method / "report.md").is_file()
        assert (out / method / "figures" / "qualitative.png").is_file()
    assert (out / "fishertune" / "figures" / "sensitivity.png").is_file()
    assert f"report: {out / 'report.md'}" in printed
    assert "mIoU (%), one run per method" in printed
    assert "fishertune compare configs/demo.yaml --methods fishertune,full" in printed
    assert "--seeds 3" in printed
    record = json.loads((out / "comparison.json").read_text())
    for method in DEMO_METHODS:
        domains = record["methods"][method]["seeds"]["0"]["domains"]
        assert list(domains) == ["source", "fog", "night", "rain", "snow", "palette"]
        assert all(0.0 <= d["miou"] <= 1.0 for d in domains.values())
