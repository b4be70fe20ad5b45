"""The ``fishertune`` console script."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest

from fishertune import __version__
from fishertune.cli import build_parser, main
from fishertune.cli.run_arguments import run_config
from fishertune.engine.config import load_config
from fishertune.tuners import available_tuners

# Paper Table 1 (ViT-L / DINOv2-L), for the methods registered so far.
PAPER_COLUMN = {
    name: size
    for name, size in {
        "lora": 0.79e6,
        "vpt": 3.69e6,
        "adaptformer": 3.17e6,
        "rein": 2.99e6,
        "vqt": 3.01e6,
        "childtune_d": 15.21e6,
        "childtune_f": 15.21e6,
        "random": 15.21e6,
        "fishertune": 15.21e6,
    }.items()
    if name in available_tuners()
}


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "usage: fishertune" in out
    assert "info" in out


@pytest.mark.parametrize(
    "command",
    [
        ["info"],
        ["data", "check"],
        ["demo"],
        ["train"],
        ["sensitivity"],
        ["evaluate"],
        ["predict"],
        ["compare"],
        ["study"],
        ["pretrain-demo-backbone"],
        ["export"],
        ["list"],
        ["config", "show"],
        ["params"],
    ],
)
def test_help_texts_print_percent_signs_once(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        main([*command, "--help"])
    assert stop.value.code == 0
    assert "%%" not in capsys.readouterr().out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_info_reports_versions(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out
    assert "cuda" in out
    assert "SparseAdamW CPU kernel: compiled and checked (square root float32: " in out


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["frobnicate"])
    assert stop.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_params_reproduces_the_paper_column(capsys: pytest.CaptureFixture[str]) -> None:
    """`fishertune params --json` on DINOv2-L (meta device): paper Table 1's trainable sizes."""
    assert main(["params", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["backbone"] == "vit_large_patch14_dinov2"
    assert abs(report["backbone_total"] - 304.2e6) <= 0.1e6
    methods = report["methods"]
    expected = {"full": report["backbone_total"], "freeze": 0, **PAPER_COLUMN}
    for method, want in expected.items():
        got = methods[method]["backbone_trainable"]
        tolerance = 0.05e6 if method == "vqt" else 0.005e6
        assert abs(got - want) <= tolerance, (method, got, want)
    assert all(m["decoder_trainable"] > 0 for m in methods.values())


def _subcommands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += _subcommands(child, (*path, name))
    return found


def test_every_option_of_every_command_has_help() -> None:
    missing = [
        f"{' '.join(path) or 'fishertune'} {action.option_strings or action.dest}"
        for path, parser in _subcommands(build_parser())
        for action in parser._actions
        if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction))
        and not (action.help or "").strip()
    ]
    assert not missing, missing


def test_list_names_methods_data_sets_backbones_and_protocols(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in [*available_tuners(), "gtav", "cityscapes", "acdc", "dinov2", "rein", "fullres"]:
        assert name in out, name
    assert re.search(r"fishertune +15\.21M +\(5\.00%\)", out)


def test_config_show_prints_the_resolved_configuration(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    demo = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    assert main(["config", "show", str(demo), "--set", "schedule.lr=3e-4"]) == 0
    shown = tmp_path / "shown.yaml"
    shown.write_text(capsys.readouterr().out)
    again = load_config(shown)
    assert again == load_config(demo, ["schedule.lr=3e-4"])
    assert again.schedule.lr == 3e-4
    assert main(["config", "show", str(demo), "--set", "schedule.bogus=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "schedule.bogus" in err


def test_train_out_sets_the_run_folder(tmp_path: Path) -> None:
    demo = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    args = build_parser().parse_args(["train", str(demo), "--out", str(tmp_path / "run")])
    assert run_config(args).output.run_dir == str(tmp_path / "run")
