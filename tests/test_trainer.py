"""The staged trainer: stages, schedule, logs, checkpoints, resume after a crash, NaN stop."""

from __future__ import annotations

import csv
import math
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from data_fixtures import build_cityscapes, build_gtav
from fishertune.engine import estimate_file as estimate_file_module
from fishertune.engine import training_state as training_state_module
from fishertune.engine.batches import StepSampler, sample_seed
from fishertune.engine.checkpoint import load_checkpoint
from fishertune.engine.estimate_file import saved_quality
from fishertune.engine.precision import autocast
from fishertune.engine.trainer import NonFiniteLossError, Trainer, lr_factor
from fishertune.engine.tuned_model import build_model, load_trained
from fishertune.sensitivity import Agreement, DomainTerm, EstimateQuality
from fishertune.tuners.scoring import ScoredTuner
from fishertune.workflows.checkpoint_evaluation import evaluate_checkpoint
from run_fixtures import tiny_config


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open(newline="") as file:
        return list(csv.DictReader(file))


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.segmentor.state_dict().items()}


def test_lr_factor_is_poly_after_a_linear_warmup() -> None:
    assert lr_factor(0, 100, 0.9) == 1.0
    assert lr_factor(50, 100, 0.9) == pytest.approx(0.5**0.9)
    assert lr_factor(100, 100, 0.9) == 0.0
    assert lr_factor(0, 100, 1.0, warmup_iters=10) == pytest.approx(1e-6)
    assert lr_factor(5, 100, 1.0, warmup_iters=10) == pytest.approx(0.95 * (1e-6 + (1 - 1e-6) / 2))
    assert lr_factor(10, 100, 1.0, warmup_iters=10) == pytest.approx(0.9)


def test_step_sampler_is_a_function_of_the_position() -> None:
    whole = StepSampler(10, batch_size=2, accumulation=2, seed=3, stop=6)
    batches = list(whole)
    assert len(batches) == len(whole) == 12
    resumed = list(StepSampler(10, batch_size=2, accumulation=2, seed=3, start=4, stop=6))
    assert resumed == batches[8:]
    # one epoch of 10 samples = positions 0..9: a permutation, each sample once
    first_epoch = [key[0] for batch in batches for key in batch][:10]
    assert sorted(first_epoch) == list(range(10))
    assert batches[0][0][1] == sample_seed(3, 0)
    # batch_size is the global batch: two ranks split the single process's micro-batches
    ranks = [
        StepSampler(10, batch_size=4, accumulation=2, seed=3, stop=3, rank=r, world_size=2)
        for r in (0, 1)
    ]
    single = StepSampler(10, batch_size=4, accumulation=2, seed=3, stop=3)
    for step in range(3):
        for micro in range(2):
            shares = ranks[0].keys(step, micro) + ranks[1].keys(step, micro)
            assert shares == single.keys(step, micro)
    with pytest.raises(ValueError, match=r"data\.batch_size: 3 images .* over 2 processes"):
        StepSampler(10, batch_size=3, stop=3, world_size=2)


def test_fishertune_runs_warmup_estimate_tune_and_writes_its_run(tmp_path: Path) -> None:
    config = tiny_config(tmp_path / "run")
    trainer = Trainer(config, progress=False)
    result = trainer.run()
    run = tmp_path / "run"
    assert result.steps == 8
    rows = _rows(run)
    train = [r for r in rows if r["stage"]]
    assert [r["stage"] for r in train] == ["warmup"] * 3 + ["tune"] * 5
    trainable = [int(r["trainable"]) for r in train]
    assert trainable[:3] == [0, 0, 0]  # the decoder warms up alone
    assert trainable[3] < trainable[-1] == result.trainable.backbone  # the selection grows
    assert trainable == sorted(trainable)
    lrs = [float(r["lr"]) for r in train]
    assert lrs[0] == pytest.approx(1e-4)
    assert lrs == sorted(lrs, reverse=True)
    evals = [r for r in rows if not r["stage"]]
    assert [int(r["step"]) for r in evals] == [4, 8]
    assert all(0.0 <= float(r["miou/fog"]) <= 1.0 for r in evals)
    for name in ("last", "best", "sensitivity"):
        assert (run / "checkpoints" / f"{name}.json").is_file()
    assert (run / "results.json").is_file()
    assert (run / "config.yaml").is_file()
    assert any((run / "tensorboard").iterdir())
    assert result.results is not None
    assert list(result.results.domains) == ["source", "fog", "night"]
    assert set(result.stage_seconds) == {"warmup", "estimate", "tune"}
    # the checkpoint holds only the method's part of the backbone: deltas at selected elements,
    # and as is the (small) tensors that the selection holds whole
    tensors, state = load_checkpoint(run / "checkpoints", "last")
    assert state["step"] == 8
    backbone = [k for k in tensors if k.startswith("model.backbone.")]
    assert any(k.endswith((":index", ":delta")) for k in backbone)
    selection = trainer.tuner.selected()
    assert selection is not None
    for key in backbone:
        name = key.removeprefix("model.backbone.")
        if not key.endswith((":index", ":delta")):
            assert selection.is_whole(name), key
            assert tensors[key].numel() < 100, key  # only biases here, never a weight matrix


def test_evaluating_during_training_changes_nothing_the_run_learns(tmp_path: Path) -> None:
    """Evaluations (every 4 steps or only at the end) draw no random number the training
    uses: the final weights and results are the same."""
    runs = {}
    for every in (4, 0):
        extra = [f"schedule.eval_every={every}", "schedule.ema=0.9"]
        config = tiny_config(tmp_path / f"every{every}", extra=extra)
        trainer = Trainer(config, progress=False)
        result = trainer.run()
        assert result.results is not None
        runs[every] = (_weights(trainer), result.results.to_dict())
    (weights, results), (other_weights, other_results) = runs[4], runs[0]
    assert results == other_results
    assert weights.keys() == other_weights.keys()
    assert all(torch.equal(weights[k], other_weights[k]) for k in weights)


def test_estimation_stage_records_its_quality_and_warns_near_chance(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The sensitivity checkpoint holds the split-half reliability of F, ΔF and DRF and the
    stable F's agreement with the diagonal Fisher; each figure near chance prints one line."""
    options = "method.options={variational_steps: 4, fraction: 0.05, min_fraction: 0.01}"
    config = tiny_config(tmp_path / "run", extra=[options])
    trainer = Trainer(config, progress=False)
    trainer.estimate_sensitivity()
    _, state = load_checkpoint(tmp_path / "run" / "checkpoints", "sensitivity")
    quality = saved_quality(state)
    tuner = trainer.tuner
    assert isinstance(tuner, ScoredTuner)
    assert quality is not None
    assert quality == tuner.quality
    assert set(quality.reliability) == {"F", "dF", "DRF"}
    assert quality.agreement is not None
    assert quality.estimator == "variational"
    assert quality.hyper["gamma"] > 0
    capsys.readouterr()
    chance = Agreement(0.0, 0.05, 10, 200)
    tuner.quality = EstimateQuality({"F": chance}, chance, "variational", {})
    trainer._record_quality()
    warned = capsys.readouterr().err.splitlines()
    assert len(warned) == 2
    assert all(line.startswith("warning: sensitivity estimate:") for line in warned)
    good = Agreement(0.9, 0.8, 10, 200)
    for overlap_f, lines in ((0.5, 1), (0.99, 2)):
        term = DomainTerm("normalised", 0.135, overlap_f, 0.2, 0.3, 10, 200)
        tuner.quality = EstimateQuality({"F": good}, good, "variational", {}, term)
        trainer._record_quality()
        said = capsys.readouterr().err.splitlines()
        assert len(said) == lines
        assert said[0].startswith("estimate: domain term: DRF (normalised, c 0.135) shares")
        assert lines == 1 or "the domain term ΔF does not count" in said[1]


def test_other_methods_train_in_one_stage(tmp_path: Path) -> None:
    result = Trainer(tiny_config(tmp_path / "run", "lora"), progress=False).run()
    stages = {r["stage"] for r in _rows(tmp_path / "run") if r["stage"]}
    assert stages == {"train"}
    assert result.steps == 8


def test_the_decoder_learning_rate_multiplier_scales_the_decoder_groups_only(
    tmp_path: Path,
) -> None:
    extra = ["schedule.lr=1e-3", "schedule.decoder_lr_mult=3", "method.options={rank: 2}"]
    trainer = Trainer(tiny_config(tmp_path / "run", "lora", extra), progress=False)
    optimizer = trainer._make_optimizer("train")
    rates = {g["name"]: g["initial_lr"] for g in optimizer.param_groups}
    assert rates["decoder"] == pytest.approx(3e-3)
    adapters = [rate for name, rate in rates.items() if name.startswith("adapter")]
    assert adapters
    assert adapters == pytest.approx([1e-3] * len(adapters))
    assert {n for n in rates if n.startswith("decoder")} == {"decoder", "decoder_no_decay"}
    assert rates["decoder_no_decay"] == pytest.approx(3e-3)


class _CrashError(Exception):
    pass


def _crash_at(step: int):  # type: ignore[no-untyped-def]
    def callback(done: int) -> None:
        if done == step:
            raise _CrashError

    return callback


@pytest.mark.parametrize(
    ("method", "crash", "extra"),
    [
        ("fishertune", 7, ["schedule.ema=0.9", "schedule.grad_clip=0.5"]),
        ("fishertune", 3, []),  # checkpoint at the end of warm-up, estimation after resume
        ("childtune_f", 5, ["schedule.grad_accumulation=2", "schedule.lr_warmup_iters=2"]),
    ],
)
def test_resume_after_a_crash_reaches_the_uninterrupted_weights(
    tmp_path: Path, method: str, crash: int, extra: list[str]
) -> None:
    whole = Trainer(tiny_config(tmp_path / "whole", method, extra), progress=False)
    whole.run()
    config = tiny_config(tmp_path / "resumed", method, extra)
    with pytest.raises(_CrashError):
        Trainer(config, progress=False, step_callback=_crash_at(crash)).run()
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(config, progress=False).run()
    resumed = Trainer(config, progress=False)
    resumed.run(resume=True)
    expected, actual = _weights(whole), _weights(resumed)
    for key, value in expected.items():
        assert torch.equal(actual[key], value), key
    assert _rows(tmp_path / "whole") == [
        {**r, "seconds": w["seconds"]}
        for r, w in zip(_rows(tmp_path / "resumed"), _rows(tmp_path / "whole"), strict=True)
    ]


class _KilledError(BaseException):
    """A kill -9 stand-in: not an Exception, so nothing on the way catches it."""


def _kill_inside_save(monkeypatch: pytest.MonkeyPatch, call: int, operation: int) -> list[str]:
    """Make checkpoint save number ``call`` of the run die before its file operation number
    ``operation`` (a rename or a removal); returns the names of the saves done."""
    saves: list[str] = []
    original = training_state_module.save_checkpoint
    replace, unlink = os.replace, Path.unlink

    def save(directory: Path, name: str, **kwargs: Any) -> Path:
        saves.append(name)
        if len(saves) - 1 != call:
            return original(directory, name, **kwargs)
        done = [0]

        def step() -> None:
            if done[0] == operation:
                raise _KilledError
            done[0] += 1

        def counted_replace(source: Any, target: Any) -> None:
            step()
            replace(source, target)

        def counted_unlink(path: Path, missing_ok: bool = False) -> None:
            if not path.name.endswith(".tmp"):
                step()
            unlink(path, missing_ok=missing_ok)

        with monkeypatch.context() as patch:
            patch.setattr(os, "replace", counted_replace)
            patch.setattr(Path, "unlink", counted_unlink)
            return original(directory, name, **kwargs)

    monkeypatch.setattr(training_state_module, "save_checkpoint", save)
    monkeypatch.setattr(estimate_file_module, "save_checkpoint", save)  # the scores' write
    return saves


def test_a_kill_at_every_file_operation_of_a_checkpoint_write_resumes_bit_identically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FisherTune's tiny run writes ``last`` after steps 2 and 3 (the warm-up's end), the
    sensitivity, ``best`` and ``last`` after step 4, ... Killed before each rename and removal
    of each of its first five checkpoint writes, ``--resume`` ends with the uninterrupted
    run's weights (a run killed before its first checkpoint completes starts afresh)."""
    whole = Trainer(tiny_config(tmp_path / "whole"), progress=False)
    with monkeypatch.context() as patch:
        names = _kill_inside_save(patch, -1, 0)
        whole.run()
    assert names[:5] == ["last", "last", "sensitivity", "best", "last"], names
    expected = _weights(whole)
    for call in range(5):
        first = names.index(names[call]) == call  # a name's first write removes nothing
        for operation in range(2 if first else 3):
            config = tiny_config(tmp_path / f"kill{call}_{operation}")
            with monkeypatch.context() as patch:
                _kill_inside_save(patch, call, operation)
                with pytest.raises(_KilledError):
                    Trainer(config, progress=False).run()
            resumed = Trainer(config, progress=False)
            resumed.run(resume=True)
            actual = _weights(resumed)
            for key, value in expected.items():
                assert torch.equal(actual[key], value), (call, operation, key)


def test_resume_refuses_a_changed_configuration_but_not_a_moved_run(tmp_path: Path) -> None:
    Trainer(tiny_config(tmp_path / "run", "full"), progress=False).run()
    changed = tiny_config(tmp_path / "run", "full", ["schedule.lr=2e-4"])
    with pytest.raises(ValueError, match=r"configuration differs in \['schedule.lr'\]"):
        Trainer(changed, progress=False).run(resume=True)
    shutil.move(tmp_path / "run", tmp_path / "moved")
    moved = Trainer(tiny_config(tmp_path / "moved", "full"), progress=False)
    assert moved.run(resume=True).steps == tiny_config(tmp_path, "full").total_steps


def test_resume_without_a_complete_checkpoint_starts_afresh(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tiny_config(tmp_path / "run", "full")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "last.0.safetensors").write_bytes(b"partial")
    result = Trainer(config, progress=False).run(resume=True)
    assert result.steps == config.total_steps
    assert "holds no complete checkpoint; starting the run from the beginning" in (
        capsys.readouterr().err
    )


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
    tmp_path: Path,
) -> None:
    config = tiny_config(tmp_path / "run", "full")
    trainer: Trainer

    def poison(step: int) -> None:
        if step == 5:
            with torch.no_grad():
                next(trainer.segmentor.head.parameters()).fill_(math.nan)

    trainer = Trainer(config, progress=False, step_callback=poison)
    with pytest.raises(NonFiniteLossError, match="at step 6"):
        trainer.run()
    _, state = load_checkpoint(tmp_path / "run" / "checkpoints", "last")
    assert state["step"] == 4
    restored = load_trained(tmp_path / "run" / "checkpoints" / "last.json")
    assert all(torch.isfinite(p).all() for p in restored.segmentor.parameters())


def test_load_trained_rebuilds_the_evaluated_model(tmp_path: Path) -> None:
    trainer = Trainer(tiny_config(tmp_path / "run"), progress=False)
    result = trainer.run()
    restored = load_trained(tmp_path / "run" / "checkpoints" / "last.json")
    for key, value in _weights(trainer).items():
        assert torch.equal(restored.segmentor.state_dict()[key], value), key
    assert restored.tuner.count() == result.trainable
    assert restored.config == trainer.config


@pytest.mark.filterwarnings("ignore:CUDA is not available")
def test_precision_is_bf16_autocast_on_cuda_and_fp32_on_cpu() -> None:
    context = autocast(torch.device("cuda"), "auto")
    assert isinstance(context, torch.autocast)
    assert context.fast_dtype == torch.bfloat16
    assert not isinstance(autocast(torch.device("cuda"), "off"), torch.autocast)
    assert not isinstance(autocast(torch.device("cpu"), "auto"), torch.autocast)
    with pytest.raises(ValueError, match=r"schedule\.amp: 'bf16' needs a CUDA device"):
        autocast(torch.device("cpu"), "bf16")


def test_real_dataset_layouts_train_and_evaluate(tmp_path: Path) -> None:
    build_gtav(tmp_path / "gtav", ids=(7, 26), n=4, train_ids=(0, 13))
    build_cityscapes(tmp_path / "cityscapes", "val", ids=(7, 8, 26), kind="labelIds")
    data = [
        "data.source=gtav",
        f"data.root={tmp_path / 'gtav'}",
        "data.targets=[cityscapes]",
        f"data.roots={{cityscapes: {tmp_path / 'cityscapes'}}}",
    ]
    result = Trainer(tiny_config(tmp_path / "run", extra=data), progress=False).run()
    assert result.results is not None
    assert list(result.results.domains) == ["cityscapes"]  # GTAV has no validation split
    assert result.best is None  # nothing to select on without a source validation set
    cityscapes = result.results.domains["cityscapes"]
    assert 0.0 <= cityscapes.miou <= 1.0
    missing = tiny_config(tmp_path / "other", extra=data[:3])
    with pytest.raises(ValueError, match=r"data\.roots\.cityscapes: the target dataset"):
        Trainer(missing, progress=False)
    # evaluating the run needs its targets only, not the source's training images
    shutil.rmtree(tmp_path / "gtav")
    again = evaluate_checkpoint(tmp_path / "run", device="cpu", progress=False)
    assert again.domains["cityscapes"].miou == cityscapes.miou


def test_the_methods_draws_follow_the_run_seed(tmp_path: Path) -> None:
    """A method's ``seed`` option defaults to ``schedule.seed`` (so ``--seeds`` varies its
    masks, perturbations and estimators' draws too); an explicit option wins."""
    seeded = tiny_config(tmp_path / "a", "random", ["schedule.seed=3"])
    assert build_model(seeded)[1].config.seed == 3  # type: ignore[attr-defined]
    explicit = tiny_config(
        tmp_path / "b", "random", ["schedule.seed=3", "method.options={seed: 9}"]
    )
    assert build_model(explicit)[1].config.seed == 9  # type: ignore[attr-defined]


def test_a_batch_of_one_with_the_feature_perturbation_fails_when_the_run_starts(
    tmp_path: Path,
) -> None:
    for method, extra in (("fishertune", []), ("full", ["method.options.train_perturbation=true"])):
        config = tiny_config(tmp_path / method, method, ["data.batch_size=1", *extra])
        with pytest.raises(ValueError, match=r"data\.batch_size: 1, but method .* needs at least"):
            Trainer(config, progress=False)
        assert not (tmp_path / method).exists()
    variant_f = "method.options={estimator: diagonal, variant: F}"
    Trainer(tiny_config(tmp_path / "f", "fishertune", ["data.batch_size=1", variant_f]))
