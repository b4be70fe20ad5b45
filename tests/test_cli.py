"""The ``fishertune`` console script."""

from __future__ import annotations

import json

import pytest

from fishertune import __version__
from fishertune.cli import main
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
