"""The run commands of the command line on tiny runs of the embedded benchmark."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from fishertune.cli import main
from run_fixtures import tiny_config

COMMANDS = [
    "demo",
    "train",
    "sensitivity",
    "evaluate",
    "predict",
    "compare",
    "pretrain-demo-backbone",
]


def _write_config(tmp_path: Path, method: str = "fishertune") -> Path:
    config = tiny_config(tmp_path / "run", method)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
    return path


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: fishertune " + command in capsys.readouterr().out


def test_train_writes_the_run_and_its_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _write_config(tmp_path)
    assert main(["train", str(config), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "| fishertune |" in out
    run = tmp_path / "run"
    report = (run / "report.md").read_text()
    for figure in ("curves.png", "sensitivity.png", "qualitative.png"):
        assert (run / "figures" / figure).is_file()
        assert f"figures/{figure}" in report
    assert "| source (source) |" in report.replace("Method | ", "")
    # a second start without --resume must not overwrite the run
    assert main(["train", str(config), "--no-progress"]) == 2
    assert "--resume" in capsys.readouterr().err
    # --resume of a finished run only re-evaluates
    assert main(["train", str(config), "--resume", "--no-progress"]) == 0


def test_configuration_errors_name_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _write_config(tmp_path)
    code = main(["train", str(config), "--set", "schedule.warmup=3", "--no-progress"])
    assert code == 2
    assert "fishertune train: error: unknown key(s) schedule.warmup" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml does not exist" in capsys.readouterr().err


def test_sensitivity_saves_scores_and_the_heatmap(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _write_config(tmp_path)
    assert main(["sensitivity", str(config), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "candidate elements" in out
    assert (tmp_path / "run" / "figures" / "sensitivity.png").is_file()
    assert (tmp_path / "run" / "checkpoints" / "sensitivity.safetensors").is_file()
    lora = _write_config(tmp_path / "lora", "lora")
    assert main(["sensitivity", str(lora), "--no-progress"]) == 2
    assert "estimates no sensitivity" in capsys.readouterr().err


def test_compare_writes_the_table_one_comparison(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _write_config(tmp_path, "freeze")
    out_dir = tmp_path / "cmp"
    code = main(
        ["compare", str(config), "--methods", "freeze,lora", "--out", str(out_dir), "--no-progress"]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "| freeze |" in out
    assert "| lora |" in out
    report = (out_dir / "report.md").read_text()
    assert "figures/comparison.png" in report
    assert (out_dir / "freeze" / "report.md").is_file()
    record = json.loads((out_dir / "comparison.json").read_text())
    assert set(record["methods"]) == {"freeze", "lora"}
    assert main(["compare", str(config), "--methods", "freeze,lorra"]) == 2
    assert "unknown ['lorra']" in capsys.readouterr().err
