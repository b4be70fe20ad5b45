"""Run by ``torchrun`` from test_distributed.py: FisherTune on the global batch of 2 images,
one per process, the DSU perturbation on during estimation and training (its batch
statistics span both processes); writes the weights and the selection of rank ``r``."""

from __future__ import annotations

import sys
from pathlib import Path

import torch.distributed as dist
from safetensors.torch import save_file

from fishertune.engine.config import RunConfig
from fishertune.engine.trainer import Trainer
from run_fixtures import tiny_config


def global_batch_config(run_dir: Path) -> RunConfig:
    """The tiny FisherTune run with a batch-independent head (layer norm) and DSU training."""
    return tiny_config(
        run_dir,
        extra=[
            "model.head_options={norm: ln}",
            "method.options={estimator: diagonal, fraction: 0.05, min_fraction: 0.01, "
            "refresh_every: 2, train_perturbation: true}",
        ],
    )


def trained_state(trainer: Trainer) -> dict[str, object]:
    """The segmentor's weights and the tuner's selection (flat indices per tensor)."""
    state = {f"weight:{k}": v.contiguous() for k, v in trainer.segmentor.state_dict().items()}
    selection = trainer.tuner.selection  # type: ignore[attr-defined]
    state.update({f"selection:{n}": index.contiguous() for n, index in selection.items()})
    return state


def main(out: Path) -> None:
    trainer = Trainer(global_batch_config(out / "run"), progress=False, device="cpu")
    trainer.run()
    save_file(trained_state(trainer), str(out / f"global{dist.get_rank()}.safetensors"))  # type: ignore[arg-type]
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
