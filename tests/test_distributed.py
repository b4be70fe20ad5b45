"""Two CPU processes under torchrun/gloo: the estimators agree with one process on the union of
their data, the trainer keeps both ranks identical with rank 0 alone writing, and
SparseFinetune selects and trains as one process with the same global batch."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from distributed_finetune_worker import finetune, global_batches
from distributed_global_batch_worker import global_batch_config, trained_state
from distributed_worker import build
from fishertune.engine.trainer import Trainer
from fishertune.sensitivity import diagonal_fisher


def _torchrun(worker: str, out: Path) -> None:
    """Run ``tests/<worker>`` on two CPU processes (one thread each) with ``out`` as argument."""
    tests = Path(__file__).parent
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(tests), os.environ.get("PYTHONPATH", "")]),
    }
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        str(tests / worker),
        str(out),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr


def test_distributed_diagonal_fisher_equals_single_process(tmp_path: Path) -> None:
    _torchrun("distributed_worker.py", tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    model, x, y = build()
    single = diagonal_fisher(model, [(x, y)], labels="given")
    for result in ranks:
        for key, value in single.items():
            torch.testing.assert_close(result["fisher"][key], value, rtol=1e-5, atol=1e-12)
    # ρ gradients are averaged, so every rank ends with the same variational estimate even
    # though each drew its own noise.
    for key in ranks[0]["precision"]:
        assert torch.equal(ranks[0]["precision"][key], ranks[1]["precision"][key])


def test_two_process_training_keeps_ranks_identical_and_rank0_writes(tmp_path: Path) -> None:
    _torchrun("distributed_trainer_worker.py", tmp_path)
    first, second = (load_file(str(tmp_path / f"weights{r}.safetensors")) for r in range(2))
    assert first.keys() == second.keys()
    for key, value in first.items():
        assert torch.equal(value, second[key]), key  # same masks, same averaged updates
    assert (tmp_path / "miou0.txt").read_text() == (tmp_path / "miou1.txt").read_text()
    with (tmp_path / "run" / "metrics.csv").open() as file:
        rows = list(csv.DictReader(file))
    steps = [int(row["step"]) for row in rows if row["stage"]]
    assert steps == list(range(1, 9))  # one writer: each step logged once
    assert (tmp_path / "run" / "checkpoints" / "sensitivity.json").is_file()


def test_sparse_finetune_on_two_ranks_equals_one_process_with_the_global_batch(
    tmp_path: Path,
) -> None:
    """The scores are reduced over the ranks, so every rank holds the same selection; by F
    alone, and by the DRF with ``across_processes``, it is the one that one process makes on
    the global batches, and with averaged gradients the ranks train the same weights as that
    process."""
    _torchrun("distributed_finetune_worker.py", tmp_path)
    for variant in ("F", "DRF", "DRF_across"):
        first, second = (load_file(str(tmp_path / f"{variant}{r}.safetensors")) for r in range(2))
        for key, value in first.items():
            assert torch.equal(value, second[key]), (variant, key)
    for variant in ("F", "DRF_across"):
        tuner, weights = finetune(global_batches(), variant)
        first = load_file(str(tmp_path / f"{variant}0.safetensors"))
        assert tuner.selection is not None
        for name, index in tuner.selection.items():
            assert torch.equal(first[f"selection:{name}"], index), (variant, name)
        for key, value in weights.items():
            torch.testing.assert_close(first[key], value, rtol=1e-4, atol=1e-6)


def test_the_configured_batch_is_the_global_batch_and_the_shift_spans_the_processes(
    tmp_path: Path,
) -> None:
    """data.batch_size 2 on two processes: one image each, and FisherTune's simulated shift
    (estimation and DSU training) still sees a batch of two; the run equals one process with
    the same batch up to the order of floating-point sums: the same selection, the same
    weights to 1e-5."""
    _torchrun("distributed_global_batch_worker.py", tmp_path)
    ranks = [load_file(str(tmp_path / f"global{r}.safetensors")) for r in range(2)]
    for key, value in ranks[0].items():
        assert torch.equal(value, ranks[1][key]), key
    trainer = Trainer(global_batch_config(tmp_path / "single"), progress=False, device="cpu")
    trainer.run()
    single = trained_state(trainer)
    assert single.keys() == ranks[0].keys()
    for key, value in single.items():
        assert isinstance(value, torch.Tensor)
        if key.startswith("selection:"):
            assert torch.equal(ranks[0][key], value), key
        else:
            torch.testing.assert_close(ranks[0][key], value, rtol=1e-4, atol=1e-5, msg=key)
