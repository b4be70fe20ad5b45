"""Run by ``torchrun`` from test_distributed.py: every rank trains the same tiny run."""

from __future__ import annotations

import sys
from pathlib import Path

import torch.distributed as dist
from safetensors.torch import save_file

from fishertune.engine.trainer import Trainer
from run_fixtures import tiny_config


def main(out: Path) -> None:
    config = tiny_config(out / "run")
    trainer = Trainer(config, progress=False, device="cpu")
    result = trainer.run()
    rank = dist.get_rank()
    state = {k: v.contiguous() for k, v in trainer.segmentor.state_dict().items()}
    save_file(state, str(out / f"weights{rank}.safetensors"))
    assert result.results is not None
    (out / f"miou{rank}.txt").write_text(repr(result.results.target_average))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
