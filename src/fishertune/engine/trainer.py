"""The staged trainer (method.md §8, paper Algorithm 1) for every method.

Methods with an estimation stage (``Tuner.estimates``: FisherTune, ChildTune-D) run three
stages; the trainer asks the tuner, never which method it holds:

1. ``warmup``: T1 = ``schedule.warmup_steps`` steps training the decoder, backbone frozen;
2. ``estimate``: the tuner's :meth:`~fishertune.tuners.Tuner.estimate` on
   T2 = ``schedule.estimate_steps`` source micro-batches (no weight update); the scores are
   saved once as the checkpoint ``checkpoints/sensitivity``
   (:mod:`fishertune.engine.estimate_file`);
3. ``tune``: T3 = ``schedule.tune_steps`` steps of the decoder and the selected backbone
   elements; ``tuner.on_step(t, T3)`` grows the selection (§7).

Every other method runs one ``train`` stage of T1 + T3 steps, so all methods make the same
number of weight updates on the same batches (:mod:`fishertune.engine.batches`).

One optimisation step: ``grad_accumulation`` micro-batches (losses divided by their number),
gradients averaged over ranks, the tuner's gradient hook, optional clipping of the global norm,
AdamW (the tuner's optimiser: parameter groups with learning-rate multipliers, SparseAdamW for
sparse methods), optional EMA. The learning rate of each group is its base rate times the poly
factor ``(1 − s/S)^power`` of the global step s over S = T1 + T3, after an optional linear
warm-up from 1e-6 (mmseg's ``LinearLR`` + ``PolyLR``). The warm-up stage's decoder optimiser is
replaced by the tuner's at the start of tuning (fresh moments; the schedule continues).

Mixed precision: bf16 autocast on CUDA (``amp: auto`` or ``bf16``), fp32 on CPU. A non-finite
loss stops the run (:class:`NonFiniteLossError`) without writing a checkpoint, so the last good
one stays. Checkpoints (``checkpoints/last``, and ``checkpoints/best`` by source validation mIoU:
selecting on the unseen targets would leak them) are written and read by
:class:`~fishertune.engine.training_state.RunCheckpoints`; ``resume=True`` continues from the
newest and reaches the same final weights as an uninterrupted run on CPU.

At the end, ``summary.json`` holds the stage times, peak memory, trainable size, best
checkpoint and the tuner's :mod:`~fishertune.tuners.selection_diagnostics`: where a sparse
method's final selection lies (``selection``) and how far each block's weights moved
(``weight_change``, for methods that change the backbone's own weights); the trainer asks the
tuner to keep its pretrained values (:meth:`~fishertune.tuners.Tuner.keep_pretrained`) as it
is built, before any step or restored checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from fishertune.data.base import LabelledImages, SegmentationDataset
from fishertune.engine.batches import (
    StepSampler,
    check_global_batch,
    evaluation_transform,
    train_loader,
    training_transform,
)
from fishertune.engine.config import RunConfig
from fishertune.engine.distributed import (
    DistributedContext,
    average_gradients,
    broadcast_buffers,
    init_distributed,
    reduce_mean,
)
from fishertune.engine.domain_sets import (
    evaluation_sets,
    source_train_set,
    unknown_label_notice,
)
from fishertune.engine.ema import WeightAverage
from fishertune.engine.estimate_file import read_estimate, save_estimate
from fishertune.engine.metrics_log import MetricsLog
from fishertune.engine.precision import autocast
from fishertune.engine.sharded_eval import eval_protocol, evaluate_segmentor
from fishertune.engine.training_state import (
    LoopState,
    RunCheckpoints,
    has_checkpoint,
)
from fishertune.engine.tuned_model import build_model
from fishertune.evaluation.domains import SOURCE_DOMAIN, DomainResults
from fishertune.progress import StepBar
from fishertune.tuners.base import TrainableCount, backbone_of, no_estimation_stage
from fishertune.tuners.selection_diagnostics import TuningDiagnostics, tuning_diagnostics

__all__ = ["NonFiniteLossError", "TrainResult", "Trainer", "has_checkpoint", "lr_factor"]

ESTIMATE_SEED_OFFSET = 7919
"""The estimation stage draws its source batches from a stream seeded ``seed + this``."""


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


def lr_factor(step: int, total: int, power: float, warmup_iters: int = 0) -> float:
    """Learning-rate factor at global step ``step`` of ``total``: linear warm-up from 1e-6
    over ``warmup_iters`` steps times the poly decay ``(1 − step/total)^power``."""
    poly = (1.0 - min(step, total) / total) ** power if total > 0 else 1.0
    if step < warmup_iters:
        start = 1e-6
        poly *= start + (1.0 - start) * step / warmup_iters
    return poly


@dataclass
class TrainResult:
    """What a finished run produced."""

    run_dir: Path
    steps: int
    results: DomainResults | None
    best: dict[str, Any] | None
    trainable: TrainableCount
    stage_seconds: dict[str, float] = field(default_factory=dict)
    peak_memory_mb: dict[str, float] = field(default_factory=dict)


def _memory_mb(device: torch.device) -> float:
    """Memory in use: the CUDA allocator's peak since the last reset, or on CPU the process's
    resident set now (Linux ``/proc``; elsewhere its peak resident set)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Trainer:
    """Runs one configured method end to end; see the module docstring.

    ``step_callback(step)`` is called after every completed optimisation step (tests use it to
    interrupt a run); ``device`` defaults to CUDA when available.
    """

    def __init__(
        self,
        config: RunConfig,
        *,
        progress: bool = True,
        device: str | None = None,
        step_callback: Callable[[int], None] | None = None,
    ) -> None:
        self.config = config
        self.progress = progress
        self.step_callback = step_callback
        self.context: DistributedContext = init_distributed(device)
        self.device = self.context.device
        self.run_dir = Path(config.output.run_dir)
        self.segmentor, self.tuner = build_model(config, self.device)
        if self.context.is_main:
            self.tuner.keep_pretrained()  # the weight change is reported on rank 0
        check_global_batch(config.data.batch_size, self.context.world_size)
        if self.context.world_size > 1 and self.device.type == "cuda":
            # data.batch_size is the global batch: batch norm normalises over all of it
            torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.segmentor)  # type: ignore[no-untyped-call]
        if self.tuner.perturbs_batch_statistics and config.data.batch_size < 2:
            raise ValueError(
                f"data.batch_size: 1, but method {self.tuner.name!r} perturbs features by their "
                "batch statistics (DSU), which needs at least 2 images per micro-batch"
            )
        schedule = config.schedule
        self.warmup_steps = schedule.warmup_steps if self.tuner.estimates else 0
        self.total_steps = config.total_steps
        data = config.data
        self.train_set = source_train_set(
            data.source,
            data.root,
            limit=data.train_images,
            synthetic=data.synthetic,
            val_share=data.val_share,
        )
        notice = unknown_label_notice(self.train_set, data.source)
        if notice is not None and self.context.is_main:
            print(f"warning: {notice}", file=sys.stderr)
        self.eval_sets: dict[str, LabelledImages] = evaluation_sets(
            data.source,
            data.root,
            data.targets,
            data.roots,
            limit=data.eval_images,
            synthetic=data.synthetic,
            val_share=data.val_share,
        )
        if SOURCE_DOMAIN not in self.eval_sets and self.context.is_main:
            print(
                f"notice: {data.source} declares no validation split, so this run keeps "
                "checkpoints/last only (no best); data.val_share=0.05 holds out 5% of the "
                "source for validation",
                file=sys.stderr,
            )
        evaluation = config.evaluation
        self.protocol = eval_protocol(
            evaluation.protocol, evaluation.mode, source=data.source, synthetic=data.synthetic
        )
        backbone = backbone_of(self.segmentor, "the trainer")
        mean, std = backbone.mean, backbone.std
        self.train_transform = training_transform(data.crop_size, data.scale_range, mean, std)
        self.eval_transform = evaluation_transform(mean, std)
        self.optimizer: torch.optim.Optimizer | None = None
        self.optimizer_stage = ""
        self.ema = WeightAverage(self.segmentor, schedule.ema) if schedule.ema else None
        self.loop = LoopState()
        self.checkpoints = RunCheckpoints(
            self.run_dir, config, self.tuner, self.ema, enabled=self.context.is_main
        )
        self.peak_memory_mb: dict[str, float] = {}
        self.log: MetricsLog | None = None
        self.results: DomainResults | None = None
        self.diagnostics: TuningDiagnostics | None = None
        """The tuner's diagnostics at the end of :meth:`run` (rank 0; None before)."""
        self._stop = self.total_steps

    # ---------------------------------------------------------------- helpers
    @property
    def checkpoint_dir(self) -> Path:
        """The run's checkpoint folder (``run_dir/checkpoints``)."""
        return self.checkpoints.folder

    @property
    def is_main(self) -> bool:
        """Whether this process writes files."""
        return self.context.is_main

    def stage_at(self, step: int) -> str:
        """The stage a training step belongs to."""
        if not self.tuner.estimates:
            return "train"
        return "warmup" if step < self.warmup_steps else "tune"

    def _autocast(self) -> AbstractContextManager[Any]:
        return autocast(self.device, self.config.schedule.amp)

    def _trainable_params(self) -> list[torch.nn.Parameter]:
        return [p for p in self.segmentor.parameters() if p.requires_grad]

    def _make_optimizer(self, stage: str) -> torch.optim.Optimizer:
        schedule = self.config.schedule
        if stage == "warmup":
            groups = self.tuner.param_groups(
                schedule.lr, schedule.weight_decay, schedule.decoder_lr_mult
            )
            optimizer: torch.optim.Optimizer = torch.optim.AdamW(groups, lr=schedule.lr)
        else:
            optimizer = self.tuner.make_optimizer(
                schedule.lr, schedule.weight_decay, decoder_lr_mult=schedule.decoder_lr_mult
            )
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.optimizer_stage = stage
        return optimizer

    def _set_lr(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        schedule = self.config.schedule
        factor = lr_factor(step, self.total_steps, schedule.poly_power, schedule.lr_warmup_iters)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        return schedule.lr * factor

    # ---------------------------------------------------------------- checkpoints
    def save(self, name: str) -> None:
        """Write checkpoint ``name`` (rank 0 only; :class:`RunCheckpoints`)."""
        self.checkpoints.save(
            name,
            self.loop,
            stage=self.stage_at(max(self.loop.step - 1, 0)),
            optimizer=self.optimizer,
            optimizer_stage=self.optimizer_stage,
        )

    def restore(self) -> bool:
        """Continue from the newest complete training checkpoint (``last`` or ``best``) in
        this freshly built trainer; ``False`` (and nothing loaded) when the run has none."""
        restored = self.checkpoints.restore(self.device)
        if restored is None:
            return False
        self.loop = restored.loop
        if self.tuner.estimates:
            self._load_scores()
        stage = self.stage_at(self.loop.step)
        if restored.optimizer_state is not None and restored.optimizer_stage == stage:
            self.optimizer = self._make_optimizer(stage)
            self.optimizer.load_state_dict(restored.optimizer_state)
        self.checkpoints.restore_rng(restored)
        return True

    def _load_scores(self) -> None:
        """Adopt the saved scores and their quality, if the estimation stage ran; select p(0)
        unless the checkpoint brought a selection."""
        saved = read_estimate(self.checkpoint_dir)
        if saved is None:
            return
        self.tuner.use_scores(saved.scores, select=self.loop.step == self.warmup_steps)
        self.tuner.quality = saved.quality

    # ---------------------------------------------------------------- evaluation
    def evaluate(self) -> DomainResults:
        """Evaluate the current (or EMA) weights on the source validation set and every target."""
        config, context = self.config, self.context
        averaged = self.ema.applied() if self.ema is not None else nullcontext()
        with averaged:
            return evaluate_segmentor(
                self.segmentor,
                self.eval_sets,
                self.eval_transform,
                self.protocol,
                num_classes=config.model.num_classes,
                device=self.device,
                amp=config.schedule.amp,
                batch_size=config.data.batch_size,
                workers=config.data.workers,
                rank=context.rank,
                world_size=context.world_size,
                progress=self.progress and self.is_main,
                method=config.method.name,
            )

    def _record_evaluation(self, results: DomainResults) -> None:
        values: dict[str, Any] = {f"miou/{n}": m.miou for n, m in results.domains.items()}
        values["miou/targets"] = results.target_average
        if self.log is not None:
            self.log.write(self.loop.step, values)
        source = results.domains.get(SOURCE_DOMAIN)
        if source is None or math.isnan(source.miou):
            return
        if self.loop.improves(source.miou):
            self.save("best")

    # ---------------------------------------------------------------- stages
    def source_batches(
        self, *, seed: int, start: int, stop: int, accumulation: int = 1
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """This rank's augmented source micro-batches of steps ``start … stop − 1`` of the
        stream seeded ``seed`` (:class:`~fishertune.engine.batches.StepSampler`), on the device."""
        config = self.config
        sampler = StepSampler(
            len(self.train_set),  # type: ignore[arg-type]
            batch_size=config.data.batch_size,
            accumulation=accumulation,
            seed=seed,
            start=start,
            stop=stop,
            rank=self.context.rank,
            world_size=self.context.world_size,
        )
        loader = train_loader(
            self.train_set,
            self.train_transform,
            sampler,
            workers=config.data.workers,
            pin_memory=self.device.type == "cuda",
        )
        for images, labels in loader:
            yield (
                images.to(self.device, non_blocking=True),
                labels.to(self.device, non_blocking=True),
            )

    def _estimate(self) -> None:
        schedule = self.config.schedule
        batches = list(
            self.source_batches(
                seed=schedule.seed + ESTIMATE_SEED_OFFSET,
                start=0,
                stop=max(schedule.estimate_steps, 1),
            )
        )
        self._begin_stage("estimate")
        start = time.perf_counter()
        scores = self.tuner.estimate(batches, progress=self.progress and self.is_main)
        self.loop.stage_seconds["estimate"] = time.perf_counter() - start
        self._note_memory("estimate")
        if self.is_main:
            save_estimate(
                self.checkpoint_dir,
                scores,
                self.tuner.quality,
                method=self.tuner.name,
                options=self.config.method.options,
            )
        self._record_quality()

    def _record_quality(self) -> None:
        """The estimate's quality into TensorBoard and the CSV log; on stderr (rank 0) the
        domain-term check (whether the DRF selection is the F or the ΔF̃ selection, method.md
        §5) and one warning line per figure near chance or term that does not count."""
        quality = self.tuner.quality
        if quality is None or not self.is_main:
            return
        values = {}
        for name, agreement in quality.reliability.items():
            values[f"estimate/reliability_{name}_spearman"] = agreement.spearman
            values[f"estimate/reliability_{name}_overlap"] = agreement.overlap
        if quality.agreement is not None:
            values["estimate/agreement_diagonal_spearman"] = quality.agreement.spearman
            values["estimate/agreement_diagonal_overlap"] = quality.agreement.overlap
        if quality.domain_term is not None:
            values["estimate/domain_term_overlap_F"] = quality.domain_term.overlap_f
            values["estimate/domain_term_overlap_dF"] = quality.domain_term.overlap_df
            values["estimate/domain_term_spearman_F_dF"] = quality.domain_term.spearman_f_df
        if self.log is not None:
            self.log.scalars(self.loop.step, values)
        if quality.domain_term is not None:  # whether the domain term counts, every time
            print(f"estimate: domain term: {quality.domain_term.describe()}", file=sys.stderr)
        for line in quality.warnings():
            print(f"warning: {line}", file=sys.stderr)

    def _train_step(self, batches: Iterator[tuple[Tensor, Tensor]]) -> dict[str, Any]:
        schedule = self.config.schedule
        stage = self.stage_at(self.loop.step)
        if self.optimizer is None or self.optimizer_stage != stage:
            self.optimizer = self._make_optimizer(stage)
        if stage == "tune":
            self.tuner.on_step(self.loop.step - self.warmup_steps, schedule.tune_steps)
        elif stage == "train":
            self.tuner.on_step(self.loop.step, self.total_steps)
        lr = self._set_lr(self.optimizer, self.loop.step)
        total = torch.zeros((), device=self.device)
        for _ in range(schedule.grad_accumulation):
            images, labels = next(batches)
            with self._autocast(), self.tuner.train_context():
                losses = self.segmentor(images, labels)
                assert isinstance(losses, dict)
                loss = sum(losses.values()) / schedule.grad_accumulation
            assert isinstance(loss, Tensor)
            loss.backward()
            total += loss.detach().float()
        params = self._trainable_params()
        average_gradients(params)
        loss_value = float(reduce_mean(total))
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(
                f"the training loss is {loss_value} at step {self.loop.step + 1} ({stage} stage); "
                f"the run stopped and its last good checkpoint is kept in {self.checkpoint_dir}"
            )
        self.tuner.after_backward()
        grad_norm = None
        if schedule.grad_clip is not None:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, schedule.grad_clip))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        broadcast_buffers(self.segmentor)
        if self.ema is not None:
            self.ema.update()
        self.loop.step += 1
        return {
            "stage": stage,
            "loss": loss_value,
            "lr": lr,
            "trainable": self.tuner.trainable_now(),
            "grad_norm": grad_norm,
        }

    def _periodic(self) -> None:
        schedule = self.config.schedule
        last = self.loop.step == self.total_steps
        if last or (schedule.eval_every and self.loop.step % schedule.eval_every == 0):
            self.results = self.evaluate()
            self._record_evaluation(self.results)
        due = schedule.checkpoint_every and self.loop.step % schedule.checkpoint_every == 0
        # after the warm-up too: the estimation stage starts from there after a crash
        if last or due or (self.loop.step == self.warmup_steps and self.tuner.estimates):
            self.save("last")

    def run(self, *, resume: bool = False, final_evaluation: bool = True) -> TrainResult:
        """Run (or, with ``resume``, continue) the stages; returns the final evaluation
        (``final_evaluation=False``: none, e.g. when stopping after estimation)."""
        if resume:
            resume = self.restore()
            if not resume and self.is_main:
                print(
                    f"notice: {self.checkpoint_dir} holds no complete checkpoint; "
                    "starting the run from the beginning",
                    file=sys.stderr,
                )
        elif self.is_main and has_checkpoint(self.run_dir):
            raise FileExistsError(
                f"{self.run_dir} already holds a run; pass --resume to continue it, or choose "
                "another output.run_dir"
            )
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(
                yaml.safe_dump(self.config.to_dict(), sort_keys=False), encoding="utf-8"
            )
        self.log = MetricsLog(
            self.run_dir,
            list(self.eval_sets),
            enabled=self.is_main,
            resume_step=self.loop.step if resume else None,
        )
        if isinstance(self.train_set, SegmentationDataset) and self.loop.step < self._stop:
            self.train_set.prepare()  # e.g. render the benchmark's scenes before the clocks
        try:
            self._run_stages()
        finally:
            self.log.close()
        results = self.results
        if results is None and final_evaluation:
            results = self.evaluate()
        if self.is_main and results is not None:
            results.to_json(self.run_dir / "results.json")
            self.diagnostics = tuning_diagnostics(self.tuner)
            summary = {
                "stage_seconds": self.loop.stage_seconds,
                "peak_memory_mb": self.peak_memory_mb,
                "trainable": self.tuner.count().backbone,
                "best": self.loop.best,
                **self.diagnostics_record(),
            }
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        return TrainResult(
            self.run_dir,
            self.loop.step,
            results,
            self.loop.best,
            self.tuner.count(),
            dict(self.loop.stage_seconds),
            dict(self.peak_memory_mb),
        )

    def diagnostics_record(self) -> dict[str, Any]:
        """The finished run's ``selection`` and ``weight_change`` as ``summary.json`` holds
        them (:meth:`TuningDiagnostics.to_dict`, JSON-ready). Raises RuntimeError before
        :meth:`run` has finished with an evaluation, and on ranks other than 0."""
        if self.diagnostics is None:
            raise RuntimeError("the run's diagnostics exist once run() has finished, on rank 0")
        return self.diagnostics.to_dict()

    def estimate_sensitivity(self, *, resume: bool = False) -> dict[str, Tensor]:
        """Run only the warm-up and estimation stages (``resume``: continue them from the run's
        checkpoints, or read back scores already saved); return the scores (also saved as
        ``checkpoints/sensitivity``). Only for methods that select by sensitivity."""
        if not self.tuner.estimates:
            raise no_estimation_stage(self.tuner.name)
        self._stop = self.warmup_steps
        self.run(resume=resume, final_evaluation=False)
        return self.tuner.scores

    def _begin_stage(self, stage: str) -> None:
        """Reset the CUDA peak when ``stage`` starts, so that its peak is its own."""
        if stage not in self.peak_memory_mb and self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def _note_memory(self, stage: str) -> None:
        """Track the stage's peak memory."""
        used = _memory_mb(self.device)
        self.peak_memory_mb[stage] = max(self.peak_memory_mb.get(stage, 0.0), used)

    def _needs_estimate(self) -> bool:
        """Whether the estimation stage is due: warm-up done, tuning ahead, no scores yet."""
        tuner = self.tuner
        return (
            tuner.estimates
            and not tuner.has_scores
            and self.warmup_steps <= self.loop.step < self.total_steps
        )

    def _run_stages(self) -> None:
        self.segmentor.train()
        if self._needs_estimate():
            self._estimate()
        schedule = self.config.schedule
        batches = self.source_batches(
            seed=schedule.seed,
            start=self.loop.step,
            stop=self.total_steps,
            accumulation=schedule.grad_accumulation,
        )
        with StepBar(
            self.stage_at(self.loop.step),
            self.total_steps,
            enabled=self.progress and self.is_main,
            completed=self.loop.step,
        ) as bar:
            while self.loop.step < min(self.total_steps, self._stop):
                stage = self.stage_at(self.loop.step)
                bar.describe(stage)
                self._begin_stage(stage)
                start = time.perf_counter()
                row = self._train_step(batches)
                seconds = time.perf_counter() - start
                self.loop.stage_seconds[stage] = self.loop.stage_seconds.get(stage, 0.0) + seconds
                self._note_memory(stage)
                assert self.log is not None
                self.log.write(self.loop.step, {**row, "seconds": seconds})
                bar.advance(f"loss {row['loss']:.3f}  lr {row['lr']:.2e}")
                self._periodic()
                if self._needs_estimate():
                    self._estimate()
                if self.step_callback is not None:
                    self.step_callback(self.loop.step)
