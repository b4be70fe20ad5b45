"""The run commands of the command line on tiny runs of the embedded benchmark."""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from fishertune.cli import main
from fishertune.engine.checkpoint import load_checkpoint, tensors_file
from fishertune.engine.trainer import Trainer
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
    assert "| source |" in report.replace("Method | ", "")
    assert "Sensitivity estimate (diagonal): split-half reliability of F: Spearman" in report
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
    assert "estimate quality: split-half reliability of F: Spearman" in out
    assert (tmp_path / "run" / "figures" / "sensitivity.png").is_file()
    assert tensors_file(tmp_path / "run" / "checkpoints", "sensitivity").is_file()
    assert f"scores: {tensors_file(tmp_path / 'run' / 'checkpoints', 'sensitivity')}" in out
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
    # --resume finds both runs' records: it reads them back, to the same table
    resumed = ["compare", str(config), "--methods", "freeze,lora", "--out", str(out_dir)]
    assert main([*resumed, "--resume", "--no-progress"]) == 0
    assert json.loads((out_dir / "comparison.json").read_text())["methods"] == record["methods"]
    assert main(["compare", str(config), "--methods", "freeze,lorra"]) == 2
    assert "unknown ['lorra']" in capsys.readouterr().err


def test_compare_with_seeds_gives_intervals_and_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every method × seed is its own run; the seeds differ (decoder, data order); the table
    has mean ± half-width and paired differences; --resume reads the finished runs' records
    back without training; a record written before compare and the study shared one runner
    is refused in one line."""
    config = _write_config(tmp_path, "freeze")
    out_dir = tmp_path / "seeds"
    command = [
        "compare",
        str(config),
        "--methods",
        "freeze,lora",
        "--seeds",
        "2",
        "--out",
        str(out_dir),
        "--no-progress",
    ]
    assert main([*command, "--validity"]) == 0
    out = capsys.readouterr().out
    assert "mean ± 95% CI over 2 seeds" in out
    # no full fine-tuning among the methods: V1 cannot be measured; V2, V3 fail on a tiny model
    assert "IoU) | not measured | needs the method full" in out
    assert "Method − freeze: mIoU points, paired over seeds" in out
    for method in ("freeze", "lora"):
        for seed in (0, 1):
            run = out_dir / method / f"seed{seed}"
            assert (run / "results.json").is_file()
            assert yaml.safe_load((run / "config.yaml").read_text())["schedule"]["seed"] == seed
    record = json.loads((out_dir / "comparison.json").read_text())
    assert [c["passed"] for c in record["validity"]["checks"]] == [None, False, False]
    assert record["seeds"] == [0, 1]
    freeze = record["methods"]["freeze"]["seeds"]
    assert freeze["0"] != freeze["1"]  # another decoder initialisation and data order
    assert record["methods"]["lora"]["paired"]["Avg. (targets)"]["count"] == 2
    from fishertune.workflows import grid

    def untrainable(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished run was trained again")

    with monkeypatch.context() as patch:
        patch.setattr(grid.Trainer, "run", untrainable)
        assert main([*command, "--resume"]) == 0
    assert json.loads((out_dir / "comparison.json").read_text())["methods"] == record["methods"]
    # a folder written before runs had records continues from its checkpoint
    (out_dir / "freeze" / "seed0" / grid.RECORD).unlink()
    assert main([*command, "--resume"]) == 0
    assert (out_dir / "freeze" / "seed0" / grid.RECORD).is_file()
    assert json.loads((out_dir / "comparison.json").read_text())["methods"] == record["methods"]
    earlier = out_dir / "lora" / "seed1" / "study_run.json"
    (out_dir / "lora" / "seed1" / grid.RECORD).rename(earlier)
    assert main([*command, "--resume"]) == 2
    error = capsys.readouterr().err
    assert "study_run.json: a record written before compare and study shared one runner" in error
    assert f"rename it to {grid.RECORD} to reuse the run" in error
    assert main([*command[:-1], "--reference", "rein", "--no-progress"]) == 2
    assert "--reference: 'rein' is not among --methods" in capsys.readouterr().err
    assert main([*command[:5], "0,x", "--no-progress"]) == 2
    assert "--seeds: expected a count" in capsys.readouterr().err


def test_a_killed_training_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    extra = ["schedule.tune_steps=40", "schedule.checkpoint_every=3", "schedule.eval_every=0"]
    reference = tiny_config(tmp_path / "whole", "fishertune", extra)
    Trainer(reference, progress=False).run()
    config = tiny_config(tmp_path / "killed", "fishertune", extra)
    path = tmp_path / "killed.yaml"
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
    process = subprocess.Popen(
        [sys.executable, "-m", "fishertune.cli", "train", str(path), "--no-progress"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last = tmp_path / "killed" / "checkpoints" / "last.json"
    deadline = time.monotonic() + 240
    step = 0
    while time.monotonic() < deadline and process.poll() is None and step < 9:
        time.sleep(0.05)
        if last.is_file():
            step = json.loads(last.read_text())["state"]["step"]
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert 9 <= step < config.total_steps
    assert not (tmp_path / "killed" / "results.json").exists()
    assert main(["train", str(path), "--resume", "--no-progress"]) == 0
    expected, _ = load_checkpoint(tmp_path / "whole" / "checkpoints", "last")
    actual, _ = load_checkpoint(tmp_path / "killed" / "checkpoints", "last")
    for key, value in expected.items():
        if key.startswith(("model.", "optimizer.")):
            assert torch.equal(actual[key], value), key


def test_evaluate_and_predict_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tiny_config(tmp_path / "run", "lora")
    Trainer(config, progress=False).run()
    run = str(tmp_path / "run")
    out_json = tmp_path / "eval.json"
    code = main(["evaluate", run, "--data", "fog", "--json", str(out_json), "--no-progress"])
    assert code == 0
    assert "| lora | " in capsys.readouterr().out
    assert list(json.loads(out_json.read_text())["domains"]) == ["fog"]
    assert main(["evaluate", run, "--data", "cityscapes"]) == 2
    assert "data entry 'cityscapes'" in capsys.readouterr().err
    image = tmp_path / "scene.png"
    from PIL import Image

    Image.new("RGB", (64, 32), (90, 90, 90)).save(image)
    out = tmp_path / "pred"
    assert main(["predict", run, str(image), "--out", str(out), "--no-progress"]) == 0
    assert {p.name for p in out.iterdir()} == {
        "scene_mask.png",
        "scene_overlay.png",
        "scene_ids.png",
        "scene_labelIds.png",
    }
    from fishertune.data.labels import cityscapes_label_map

    ids = np.asarray(Image.open(out / "scene_ids.png"))
    label_ids = np.asarray(Image.open(out / "scene_labelIds.png"))
    assert np.array_equal(cityscapes_label_map().apply(label_ids), ids)  # label ids → train ids
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("b.jpg", "a.png"):
        Image.new("RGB", (64, 32), (90, 90, 90)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    native = tmp_path / "native"
    assert main(["predict", run, str(folder), "--out", str(native), "--native"]) == 0
    assert sorted(p.name for p in native.glob("*_ids.png")) == ["a_ids.png", "b_ids.png"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", run, str(empty), "--out", str(native)]) == 2
    assert "a folder without images" in capsys.readouterr().err
    assert main(["predict", run, str(tmp_path / "nope.png"), "--out", str(out)]) == 2
    assert "nope.png" in capsys.readouterr().err


def test_pretrain_demo_backbone_command_writes_weights_and_recipe(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo_vit.safetensors"
    arguments = ["--steps", "2", "--corpus-size", "6", "--batch-size", "2", "--no-progress"]
    assert main(["pretrain-demo-backbone", "--out", str(out), *arguments]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    recipe = json.loads(out.with_suffix(".json").read_text())
    assert recipe["recipe"]["steps"] == 2
    assert recipe["recipe"]["corpus_size"] == 6


def _one_line_error(capsys: pytest.CaptureFixture[str], status: int, code: int = 2) -> str:
    assert status == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("gpu0", "--device: expected cpu, cuda or cuda:N, got 'gpu0'"),
        ("cpu:1", "--device: expected cpu, cuda or cuda:N, got 'cpu:1'"),
        pytest.param(
            "cuda",
            "--device cuda: CUDA is not available here",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present"),
        ),
    ],
)
def test_a_bad_or_absent_device_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], device: str, message: str
) -> None:
    config = _write_config(tmp_path, "full")
    err = _one_line_error(capsys, main(["train", str(config), "--device", device]))
    assert message in err
    assert not (tmp_path / "run").exists(), "nothing may be written"
    err = _one_line_error(capsys, main(["evaluate", str(tmp_path), "--device", device]))
    assert message in err or "no checkpoint" in err


def test_ctrl_c_says_how_to_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from fishertune.workflows import training

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(training.Trainer, "run", interrupted)
    config = _write_config(tmp_path, "full")
    err = _one_line_error(capsys, main(["train", str(config), "--no-progress"]), code=130)
    assert err == (
        "fishertune train: interrupted; rerun the same command with --resume to continue "
        "from the last complete checkpoint"
    )


def test_a_read_only_run_directory_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run directory on a read-only file system (simulated: this suite may run as root,
    for whom permissions do not bite): one line naming the directory, exit 2."""
    import errno

    config = _write_config(tmp_path, "full")
    mkdir = Path.mkdir

    def read_only(path: Path, *args: object, **kwargs: object) -> None:
        if tmp_path / "run" in (path, *path.parents):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        mkdir(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "mkdir", read_only)
    err = _one_line_error(capsys, main(["train", str(config), "--no-progress"]))
    assert err.startswith("fishertune train: error: Read-only file system: ")
    assert str(tmp_path / "run") in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["params", "--backbone", "nope"], "unknown timm model 'nope'"),
        (["params", "--methods", "bogus"], "--methods: unknown ['bogus']"),
        (["params", "--img-size", "0"], "--img-size: expected an integer ≥ 1, got 0"),
        (["params", "--patch-size", "-1"], "--patch-size: expected an integer ≥ 0, got -1"),
        (["data", "check", "cityscapes", ".", "--max-problems", "-1"], "--max-problems"),
    ],
)
def test_params_and_data_errors_are_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    err = _one_line_error(capsys, main(argv))
    assert message in err
    assert err.startswith(f"fishertune {' '.join(a for a in argv[:2] if not a.startswith('-'))}")


def test_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills up during the run's second checkpoint write: one line, the first
    checkpoint stays loadable, and ``--resume`` finishes the run once there is space."""
    from safetensors import SafetensorError

    from fishertune.engine import checkpoint

    config = _write_config(tmp_path, "full")
    writes: list[object] = []
    save_file = checkpoint.save_file

    def filling_disk(*args: object, **kwargs: object) -> None:
        writes.append(args)
        if len(writes) == 2:
            raise SafetensorError("Error while serializing: No space left on device (os error 28)")
        save_file(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(checkpoint, "save_file", filling_disk)
    err = _one_line_error(capsys, main(["train", str(config), "--no-progress"]))
    assert "No space left on device" in err
    assert load_checkpoint(tmp_path / "run" / "checkpoints", "last")[1]["step"] == 2
    assert main(["train", str(config), "--no-progress", "--resume"]) == 0
    assert (tmp_path / "run" / "results.json").is_file()


def test_output_paths_are_checked_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run folder that does not exist would fail later; a bad --json or --out fails first."""
    missing = str(tmp_path / "no-run")
    assert main(["evaluate", missing, "--json", str(tmp_path)]) == 2
    assert "--json" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["evaluate", missing, "--json", str(blocker / "x.json")]) == 2
    assert "is a file; expected a folder" in capsys.readouterr().err
    assert main(["predict", missing, str(blocker), "--out", str(blocker)]) == 2
    assert "--out" in capsys.readouterr().err


def test_predict_turns_a_photo_upright_by_its_exif_orientation(tmp_path: Path) -> None:
    from PIL import Image

    config = tiny_config(tmp_path / "run", "freeze")
    Trainer(config, progress=False).run()
    photo = tmp_path / "portrait.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90° clockwise
    Image.new("RGB", (64, 32), (90, 90, 90)).save(photo, exif=exif)
    out = tmp_path / "pred"
    assert main(["predict", str(tmp_path / "run"), str(photo), "--out", str(out)]) == 0
    with Image.open(out / "portrait_ids.png") as ids:
        assert ids.size == (32, 64)  # upright: width and height swapped


def test_a_full_disk_is_reported_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails without naming its file (ENOSPC) is one line naming the file."""
    import errno

    from fishertune.atomic import atomic_write

    def full(path: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    target = tmp_path / "out" / "results.json"
    with pytest.raises(OSError, match="No space left on device") as error:
        atomic_write(target, full)
    assert error.value.filename == str(target)
    assert not list(target.parent.iterdir())  # no temporary file left behind

    def fail(_: object) -> int:
        atomic_write(target, full)
        return 0

    from fishertune.cli.guard import run_guarded

    assert run_guarded("evaluate", fail, argparse.Namespace()) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"fishertune evaluate: error: No space left on device: {target}"
