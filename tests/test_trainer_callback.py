"""FisherTune inside ``transformers.Trainer`` (issue 23 items 2 and 6): a tiny Hugging Face
ViT and a tiny timm ViT trained a few steps with the callback: only selected elements of the
candidate tensors change, the selection grows nested, the deltas of every checkpoint round-trip
bit for bit, and a run resumed from a checkpoint ends exactly where the uninterrupted one did."""

from __future__ import annotations

import copy
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from conftest import tiny_hf_vit, tiny_vit_classifier
from fishertune.finetune import FinetuneConfig, FisherTuneCallback, SparseFinetune, load_deltas
from fishertune.finetune.trainer_callback import DELTAS_FILE, STATE_FILE
from fishertune.selection import Selection, trainable_fraction

pytest.importorskip("transformers")
from transformers import Trainer, TrainingArguments

STEPS = 6


class Images(Dataset[dict[str, Tensor]]):
    """Sixteen seeded 32 px images with class labels, under the model's input key."""

    def __init__(self, key: str) -> None:
        generator = torch.Generator().manual_seed(7)
        self.x = torch.randn(16, 3, 32, 32, generator=generator)
        self.y = torch.randint(0, 5, (16,), generator=generator)
        self.key = key

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {self.key: self.x[index], "labels": self.y[index]}


class Recorder(FisherTuneCallback):
    """The callback, remembering the selection after every step."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.history: list[Selection] = []

    def on_step_end(self, *args: Any, **kwargs: Any) -> None:
        super().on_step_end(*args, **kwargs)
        if self.tuner.selection is not None:
            self.history.append(self.tuner.selection)


def _per_sample_ce(outputs: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(outputs, targets, reduction="none")


def _hf() -> tuple[nn.Module, FinetuneConfig, dict[str, Any], dict[str, Any]]:
    config = FinetuneConfig(
        total_steps=STEPS,
        refresh_every=2,
        target_modules=("q_proj", "k_proj", "v_proj", "fc1", "fc2"),
        dense_modules=("classifier",),
        shift_module="vit.embeddings",
        prefix_tokens=1,
        estimation_batches=2,
    )
    return tiny_hf_vit(), config, {}, {}


def _timm() -> tuple[nn.Module, FinetuneConfig, dict[str, Any], dict[str, Any]]:
    config = FinetuneConfig(
        total_steps=STEPS, refresh_every=2, dense_modules=("head",), estimation_batches=2
    )

    def batch_loss(outputs: Tensor, labels: Tensor, num_items_in_batch: Any = None) -> Tensor:
        return F.cross_entropy(outputs, labels)

    # a timm forward(x) does not name "labels": the Trainer must be told to keep them
    return (
        tiny_vit_classifier(),
        config,
        {"compute_loss_func": batch_loss},
        {"label_names": ["labels"]},
    )


MODELS = {"hf_vit": (_hf, "pixel_values", None), "timm_vit": (_timm, "x", _per_sample_ce)}


def _run(
    kind: str, out: Path, *, warmup: int = 0, resume: Path | None = None
) -> tuple[nn.Module, nn.Module, Recorder]:
    build, key, loss_fn = MODELS[kind]
    model, config, extra, arguments = build()
    base = copy.deepcopy(model)
    tuner = SparseFinetune(model, config)
    callback = Recorder(tuner, loss_fn=loss_fn, warmup_steps=warmup)
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=STEPS,
        per_device_train_batch_size=4,
        save_steps=3,
        logging_steps=100,
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        **arguments,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=Images(key),
        optimizers=(tuner.optimizer(lr=1e-2, weight_decay=0.0), None),
        callbacks=[callback],
        **extra,
    )
    trainer.train(resume_from_checkpoint=None if resume is None else str(resume))
    return base, model, callback


@pytest.mark.parametrize("kind", ["hf_vit", "timm_vit"])
def test_the_trainer_trains_only_the_selection_and_grows_it_nested(
    kind: str, tmp_path: Path
) -> None:
    base, model, callback = _run(kind, tmp_path / "run", warmup=1)
    tuner = callback.tuner
    assert len(callback.history) == STEPS  # estimated at the end of the one warm-up step
    first = trainable_fraction(1, STEPS, 0.01, 0.05, "grow")
    assert callback.history[0].count == round(first * tuner.total)
    for smaller, larger in pairwise(callback.history):
        assert smaller.overlap(larger) == smaller.count
    final = tuner.selection
    assert final is not None
    assert final.count == round(tuner.config.fraction * tuner.total)
    tuned = dict(model.named_parameters())
    changed = 0
    for name, before in base.named_parameters():
        after = tuned[name]
        if name in final:
            assert torch.equal(before[~final.mask(name)], after[~final.mask(name)]), name
            changed += int(not torch.equal(before, after))
        elif name not in tuner.dense:
            assert torch.equal(before, after), name
    assert changed > 0
    for step in (3, 6):
        assert (tmp_path / "run" / f"checkpoint-{step}" / STATE_FILE).is_file()
    fresh = copy.deepcopy(base)
    load_deltas(fresh, tmp_path / "run" / DELTAS_FILE)
    for name, value in model.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[name]), name


@pytest.mark.parametrize("kind", ["hf_vit", "timm_vit"])
def test_a_run_resumed_from_a_trainer_checkpoint_continues_identically(
    kind: str, tmp_path: Path
) -> None:
    _, whole, _ = _run(kind, tmp_path / "whole")
    _, resumed, callback = _run(
        kind, tmp_path / "whole", resume=tmp_path / "whole" / "checkpoint-3"
    )
    assert callback.tuner.steps_done == STEPS
    for name, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    midway = copy.deepcopy(resumed)
    load_deltas(midway, tmp_path / "whole" / "checkpoint-6" / DELTAS_FILE)
    for name, value in resumed.state_dict().items():
        assert torch.equal(value, midway.state_dict()[name]), name


def test_the_callback_needs_the_tuner_optimizer(tmp_path: Path) -> None:
    model, config, _, _ = _hf()
    tuner = SparseFinetune(model, config)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, report_to=[], use_cpu=True)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=Images("pixel_values"),
        callbacks=[FisherTuneCallback(tuner)],
    )
    with pytest.raises(RuntimeError, match="give the Trainer the tuner's optimiser"):
        trainer.train()
    with pytest.raises(ValueError, match="warmup_steps must be >= 0"):
        FisherTuneCallback(tuner, warmup_steps=-1)
