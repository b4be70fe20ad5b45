"""Two CPU processes under torchrun/gloo agree with one process on the union of their data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from distributed_worker import build
from fishertune.sensitivity import diagonal_fisher


def test_distributed_diagonal_fisher_equals_single_process(tmp_path: Path) -> None:
    worker = Path(__file__).with_name("distributed_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        str(worker),
        str(tmp_path),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
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
