"""FisherTune inside ``transformers.Trainer``: one callback and the tuner's optimiser.

::

    tuner = SparseFinetune(model, FinetuneConfig(total_steps=1000, dense_modules=("classifier",)))
    trainer = Trainer(
        model, args, train_dataset=train,
        optimizers=(tuner.optimizer(lr=1e-4), None),   # the Trainer's scheduler drives its lr
        callbacks=[FisherTuneCallback(tuner)],
    )
    trainer.train()                                    # or train(resume_from_checkpoint=True)

The callback estimates at the start of training, or after ``warmup_steps`` optimiser steps in
which only the dense modules train (the optimiser's selection is empty until then), on
:attr:`FinetuneConfig.estimation_batches` batches of ``batches`` or, by default, of the
Trainer's own training data loader; it counts every optimiser step (growing the selection on
schedule); with every Trainer checkpoint it writes :data:`DELTAS_FILE` (the trained elements,
:func:`~fishertune.finetune.deltas.save_deltas`) and :data:`STATE_FILE` (what growth needs
to continue, :meth:`~fishertune.finetune.sparse_finetune.SparseFinetune.save_state`) into the
checkpoint folder, and restores both when the Trainer resumes from that checkpoint (the
Trainer itself restores the optimiser with its selection, the scheduler and the random state;
the weights too, except where transformers' own reload misses renamed keys, issue 43701, which
the deltas repair). At the end of training the deltas go to ``output_dir`` too.

The selection is installed after the Trainer has prepared the model, so this runs in one
process; under DDP a parameter's ``requires_grad`` must not change after wrapping, which the
growing selection does (not supported).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from fishertune.finetune.deltas import load_deltas
from fishertune.finetune.sparse_finetune import LossFn, SparseFinetune

__all__ = ["DELTAS_FILE", "STATE_FILE", "FisherTuneCallback", "checkpoint_folder"]

DELTAS_FILE = "fishertune_deltas.safetensors"
"""The deltas file in each checkpoint folder and, at the end, in ``output_dir``."""
STATE_FILE = "fishertune_state.safetensors"
"""The tuner's state in each checkpoint folder (scores of the final share, selection, step)."""


def _output_dir(args: TrainingArguments) -> Path:
    if args.output_dir is None:
        raise ValueError("FisherTuneCallback: TrainingArguments.output_dir is not set")
    return Path(args.output_dir)


def checkpoint_folder(args: TrainingArguments, step: int) -> Path:
    """The folder the Trainer writes its checkpoint of ``step`` into."""
    return _output_dir(args) / f"checkpoint-{step}"


class FisherTuneCallback(TrainerCallback):
    """Estimate, grow and save a :class:`SparseFinetune` in step with a ``Trainer`` run.

    Args:
        tuner: the tuner of the Trainer's model; its :meth:`~SparseFinetune.optimizer` must
            be the Trainer's optimiser (``optimizers=(tuner.optimizer(...), None)``).
        batches: the estimation batches (any kind the estimators take); None: the Trainer's
            training data loader.
        loss_fn: per-sample losses ``loss_fn(outputs, targets)`` for the estimate; None: the
            model's own loss of dict batches with ``labels`` (Hugging Face models).
        warmup_steps: optimiser steps of the dense modules alone before the estimate.
    """

    def __init__(
        self,
        tuner: SparseFinetune,
        batches: Iterable[Any] | None = None,
        *,
        loss_fn: LossFn | None = None,
        warmup_steps: int = 0,
    ) -> None:
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.tuner = tuner
        self.batches = batches
        self.loss_fn = loss_fn
        self.warmup_steps = warmup_steps

    def _estimate(self, train_dataloader: Iterable[Any] | None) -> None:
        data = self.batches if self.batches is not None else train_dataloader
        if data is None:
            raise RuntimeError("FisherTuneCallback: no estimation batches and no train_dataloader")
        self.tuner.estimate(data, loss_fn=self.loss_fn)

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        optimizer: Any = None,
        train_dataloader: Iterable[Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Check the optimiser, restore a resumed run's state, or estimate (no warm-up)."""
        own = self.tuner.held_optimizer
        given = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps it
        if own is None or given is not own:
            raise RuntimeError(
                "FisherTuneCallback: give the Trainer the tuner's optimiser: "
                "Trainer(..., optimizers=(tuner.optimizer(lr=...), None))"
            )
        if state.global_step > 0:
            folder = checkpoint_folder(args, state.global_step)
            saved = folder / STATE_FILE
            if saved.is_file():
                self.tuner.load_state(saved)
                # The trained elements again, from the checkpoint's deltas: the Trainer's own
                # reload misses renamed keys (transformers issue 43701: a ViT's layers come
                # back as initialised, with a warning); every other element is the base's.
                load_deltas(self.tuner.model, folder / DELTAS_FILE)
            elif state.global_step < self.warmup_steps:
                self.tuner.steps_done = state.global_step
            else:
                raise FileNotFoundError(
                    f"{saved}: resuming at step {state.global_step} needs the tuner state "
                    "the callback saved with that checkpoint"
                )
            return
        if self.warmup_steps == 0:
            self._estimate(train_dataloader)

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        train_dataloader: Iterable[Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Count the optimiser step (growth on schedule); estimate once the warm-up is over."""
        self.tuner.step()
        if self.tuner.selection is None and state.global_step >= self.warmup_steps:
            self._estimate(train_dataloader)

    def on_save(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        """Write the deltas and the tuner state into the checkpoint just saved."""
        if self.tuner.selection is None or not state.is_world_process_zero:
            return
        folder = checkpoint_folder(args, state.global_step)
        folder.mkdir(parents=True, exist_ok=True)
        self.tuner.save(folder / DELTAS_FILE)
        self.tuner.save_state(folder / STATE_FILE)

    def on_train_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        """Write the final deltas into ``output_dir``."""
        if self.tuner.selection is not None and state.is_world_process_zero:
            self.tuner.save(_output_dir(args) / DELTAS_FILE)
