"""``fishertune export``: a trained run as one standalone file, loadable without the run folder
or base weights, predicting what the run's checkpoint predicts (issue 24 item 4)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from fishertune.cli import main
from fishertune.engine.trainer import Trainer
from fishertune.engine.tuned_model import load_trained
from fishertune.workflows.export import export_model, load_exported
from run_fixtures import tiny_config


@pytest.mark.parametrize(
    ("method", "merged"), [("lora", True), ("fishertune", True), ("rein", False)]
)
def test_an_exported_run_predicts_as_its_checkpoint(
    tmp_path: Path, method: str, merged: bool
) -> None:
    run = tmp_path / "run"
    Trainer(tiny_config(run, method), progress=False).run()
    done = export_model(run, tmp_path / "model.safetensors")
    assert (done.method, done.merged) == (method, merged)
    images = torch.randn(2, 3, 32, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = load_trained(run).segmentor.predict(images, mode="whole")
    shutil.rmtree(run)  # the file alone
    with torch.no_grad():
        got = load_exported(done.path).predict(images, mode="whole")
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_export_command_and_bad_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    Trainer(tiny_config(run, "full"), progress=False).run()
    out = tmp_path / "model.safetensors"
    assert main(["export", str(run), "--out", str(out)]) == 0
    assert "folded into the backbone's weights" in capsys.readouterr().out
    assert main(["export", str(run), "--out", str(tmp_path)]) == 2
    assert "--out" in capsys.readouterr().err
    data = bytearray(out.read_bytes())
    data[-1] ^= 0x01
    out.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="do not match their checksum"):
        load_exported(out)
    with pytest.raises(FileNotFoundError, match="no exported model file there"):
        load_exported(tmp_path / "none.safetensors")
