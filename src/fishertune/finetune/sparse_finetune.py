"""FisherTune on any ``nn.Module`` in a few lines: a config, one wrapper, one call per step.

::

    tuner = SparseFinetune(model, FinetuneConfig(total_steps=1000, dense_modules=("head",)))
    tuner.estimate(batches)               # F and F' under the simulated shift, the DRF, δ_min
    optimizer = tuner.optimizer(lr=1e-4)  # SparseAdamW: the selection + the dense modules
    for x, y in loader:
        loss_fn(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
        tuner.step()                      # grows the selection on schedule (nested)
    tuner.save("deltas.safetensors")      # only what was trained (fishertune.finetune.deltas)

The optimiser may also be made first (its selection starts empty, so only the dense modules
train, a warm-up) and the estimate installed into it later, at the schedule's share for the
steps counted so far; :class:`~fishertune.finetune.trainer_callback.FisherTuneCallback` does
that inside ``transformers.Trainer``. :meth:`SparseFinetune.save_state` /
:meth:`SparseFinetune.load_state` keep what a resumed run needs to grow the selection exactly
as an uninterrupted one: the scores of the final share's elements, the selection and the step.

Candidates are the weights of the modules whose names end with one of
:attr:`FinetuneConfig.target_modules` (like peft's ``target_modules``); the budget is a share
of every parameter of the model outside :attr:`FinetuneConfig.dense_modules` (the paper's δ of
all backbone parameters, method.md §7). The simulated domain shift (method.md §4) perturbs the
output of the module named :attr:`FinetuneConfig.shift_module` (timm ViTs: ``norm_pre``, the
tokens entering the first block; its ``num_prefix_tokens`` class and register tokens are left
untouched; other models: :attr:`FinetuneConfig.prefix_tokens`). Scores are the diagonal
DR-FIM (Eq. 7) or the stable one (Eq. 15), combined as method.md §5 decides
(:func:`~fishertune.sensitivity.dr_fim`, :func:`~fishertune.sensitivity.stable_dr_fim`).
Batches (:mod:`fishertune.sensitivity.model_inputs`) are ``(inputs, targets)`` pairs, with
``inputs`` a tensor or a dict of keyword tensors, or Hugging Face dict batches: with
``labels="given"`` and no ``loss_fn`` the model's own ``ModelOutput.loss`` of every sample;
with a ``loss_fn(outputs, targets)`` returning per-sample losses, the batch's ``labels`` are
its targets; pairs without a ``loss_fn`` use the built-in per-sample cross-entropy on the class
logits (``(B, K)`` or ``(B, K, H, W)``); ``labels="sampled"`` draws the targets from the class
logits (the true Fisher). Nothing of the segmentation package is needed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fishertune.finetune.checked_file import load_checked, save_checked
from fishertune.finetune.deltas import save_deltas
from fishertune.optim import SparseAdamW
from fishertune.selection import (
    SCHEDULE_KINDS,
    Selection,
    check_fraction,
    top_k,
    trainable_fraction,
)
from fishertune.sensitivity import (
    COMBINES,
    VARIANTS,
    FeaturePerturbation,
    diagonal_fisher,
    dr_fim,
    fit_variational,
    stable_dr_fim,
)

__all__ = ["ESTIMATORS", "FinetuneConfig", "SparseFinetune"]

ESTIMATORS = ("diagonal", "variational")
STATE_FORMAT = "fishertune-tuner-state/1"
"""The ``format`` metadata entry of a :meth:`SparseFinetune.save_state` file."""
_SCHEDULE_FIELDS = ("fraction", "min_fraction", "schedule", "total_steps", "refresh_every")
_RANKED, _SCORES, _SELECTED = ":ranked", ":scores", ":selected"

LossFn = Callable[[Any, Tensor], Tensor]


@dataclass(frozen=True)
class FinetuneConfig:
    """The options of :class:`SparseFinetune` (defaults: the paper's, method.md §7–§8).

    Attributes:
        fraction: δ_max, the final budget as a share of every parameter outside
            ``dense_modules``.
        min_fraction: δ_min, the share at the first step of the growing schedule.
        schedule: ``"grow"`` (δ_min → δ_max over ``total_steps``) or ``"constant"`` (δ_max).
        total_steps: the training steps the schedule spans.
        refresh_every: grow the selection every this many steps.
        target_modules: module-name suffixes whose ``weight`` tensors are the candidates.
        dense_modules: module-name prefixes trained densely (e.g. a new head).
        shift_module: name of the module whose output the simulated shift perturbs; None
            scores by F alone.
        prefix_tokens: leading tokens of ``shift_module``'s output the shift leaves alone (a
            class token); None: the model's ``num_prefix_tokens`` (timm), else 0.
        shift_scale: s, the shift's strength (method.md §4).
        estimator: ``"diagonal"`` (Eq. 7) or ``"variational"`` (Eq. 15).
        variant: ``"DRF"``, ``"F"`` or ``"dF"``.
        combine: how F and the domain term combine (method.md §5).
        labels: ``"given"`` (the batch's targets, or a Hugging Face model's own loss) or
            ``"sampled"`` (targets drawn from the class logits: the true Fisher).
        estimation_batches: at most this many batches are taken from what
            :meth:`SparseFinetune.estimate` is given.
        variational_steps: steps of each stable fit.
        across_processes: under ``torch.distributed``, the i-th estimation batches of all
            ranks are one batch: the shift's batch statistics and noise and the sampled
            labels are those one process with the whole batch gets, so a DRF run equals one
            process with the global batch (every rank must then pass as many batches).
        seed: seeds the shift's noise and the estimators' draws.
    """

    fraction: float = 0.05
    min_fraction: float = 0.01
    schedule: str = "grow"
    total_steps: int = 1000
    refresh_every: int = 100
    target_modules: tuple[str, ...] = ("qkv", "fc1", "fc2")
    dense_modules: tuple[str, ...] = ()
    shift_module: str | None = "norm_pre"
    prefix_tokens: int | None = None
    shift_scale: float = 1.0
    estimator: str = "diagonal"
    variant: str = "DRF"
    combine: str = "normalised"
    labels: str = "given"
    estimation_batches: int = 16
    variational_steps: int = 100
    across_processes: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        check_fraction(self.fraction)
        check_fraction(self.min_fraction, "min_fraction")
        if self.min_fraction > self.fraction:
            raise ValueError(f"min_fraction {self.min_fraction} exceeds fraction {self.fraction}")
        choices = {
            "schedule": (self.schedule, SCHEDULE_KINDS),
            "estimator": (self.estimator, ESTIMATORS),
            "variant": (self.variant, VARIANTS),
            "combine": (self.combine, COMBINES),
            "labels": (self.labels, ("given", "sampled")),
        }
        for option, (value, allowed) in choices.items():
            if value not in allowed:
                raise ValueError(f"{option} must be one of {tuple(allowed)}, got {value!r}")
        for option in ("total_steps", "refresh_every", "estimation_batches", "variational_steps"):
            if getattr(self, option) < 1:
                raise ValueError(f"{option} must be >= 1, got {getattr(self, option)}")
        if not self.target_modules:
            raise ValueError("target_modules: name at least one module suffix")
        if self.prefix_tokens is not None and self.prefix_tokens < 0:
            raise ValueError(f"prefix_tokens must be >= 0, got {self.prefix_tokens}")
        if self.variant != "F" and self.shift_module is None:
            raise ValueError(f"variant {self.variant!r} needs a shift_module (or variant 'F')")


class SparseFinetune:
    """Fisher-guided sparse fine-tuning of ``model`` with ``config`` (see the module)."""

    def __init__(self, model: nn.Module, config: FinetuneConfig | None = None) -> None:
        self.model = model
        self.config = config if config is not None else FinetuneConfig()
        cfg = self.config
        modules = dict(model.named_modules())
        self.dense = {
            name: p
            for name, p in model.named_parameters()
            if any(name == d or name.startswith(d + ".") for d in cfg.dense_modules)
        }
        self.candidates = {
            f"{name}.weight": module.weight
            for name, module in modules.items()
            if name.endswith(cfg.target_modules)
            and isinstance(getattr(module, "weight", None), nn.Parameter)
            and f"{name}.weight" not in self.dense
        }
        if not self.candidates:
            raise ValueError(
                f"target_modules {list(cfg.target_modules)}: no module of the model ends with "
                "these names and has a weight"
            )
        if cfg.shift_module is not None and cfg.shift_module not in modules:
            raise ValueError(f"shift_module {cfg.shift_module!r}: the model has no such module")
        self.total = sum(p.numel() for n, p in model.named_parameters() if n not in self.dense)
        self.scores: dict[str, Tensor] | None = None
        self.selection: Selection | None = None
        self.steps_done = 0
        self._optimizer: SparseAdamW | None = None

    # ---------------------------------------------------------------- estimation
    def _shift(self) -> FeaturePerturbation | None:
        cfg = self.config
        if cfg.shift_module is None or cfg.variant == "F":
            return None
        return FeaturePerturbation(
            dict(self.model.named_modules())[cfg.shift_module],
            scale=cfg.shift_scale,
            generator=torch.Generator().manual_seed(cfg.seed),
            num_prefix_tokens=(
                int(getattr(self.model, "num_prefix_tokens", 0))
                if cfg.prefix_tokens is None
                else cfg.prefix_tokens
            ),
            across_processes=cfg.across_processes,
        )

    def estimate(self, batches: Iterable[Any], loss_fn: LossFn | None = None) -> dict[str, Tensor]:
        """Score every candidate on the first :attr:`FinetuneConfig.estimation_batches` of
        ``batches`` (F, and F' under the shift), select the schedule's share at the steps
        counted so far (installed into the optimiser if it exists) and return the scores."""
        cfg = self.config
        data = list(islice(batches, cfg.estimation_batches))
        if not data:
            raise ValueError("estimate: batches is empty")
        shift = self._shift()
        options: dict[str, Any] = {
            "params": self.candidates,
            "labels": cfg.labels,
            "across_processes": cfg.across_processes,
        }
        if loss_fn is not None:
            options["loss_fn"] = loss_fn
        if cfg.estimator == "diagonal":
            clean = diagonal_fisher(self.model, data, generator=self._generator(), **options)
            shifted = clean
            if shift is not None:
                shifted = diagonal_fisher(
                    self.model, data, perturbation=shift, generator=self._generator(), **options
                )
            scores = dr_fim(
                clean, shifted, coef=_coef(shift), variant=cfg.variant, combine=cfg.combine
            )
        else:
            steps = cfg.variational_steps
            fit = fit_variational(
                self.model, data, steps=steps, generator=self._generator(), **options
            )
            fit_shift = fit
            if shift is not None:
                fit_shift = fit_variational(
                    self.model,
                    data,
                    steps=steps,
                    perturbation=shift,
                    gamma=fit.gamma,
                    tau=fit.tau,
                    generator=self._generator(),
                    **options,
                )
            scores = stable_dr_fim(
                fit.precision,
                fit_shift.precision,
                gamma=fit.gamma,
                tau=fit.tau,
                coef=_coef(shift),
                variant=cfg.variant,
                combine=cfg.combine,
            )
        self.scores = scores
        self.selection = self._top(self.steps_done, None)
        if self._optimizer is not None:
            self._optimizer.update_selection(self.selection)
        return scores

    def _generator(self) -> torch.Generator:
        """The estimators' draws, the same for the clean and the shifted pass."""
        return torch.Generator().manual_seed(self.config.seed + 1)

    def _top(self, step: int, keep: Selection | None) -> Selection:
        cfg = self.config
        assert self.scores is not None
        share = trainable_fraction(
            step, cfg.total_steps, cfg.min_fraction, cfg.fraction, cfg.schedule
        )
        return top_k(self.scores, fraction=share, total=self.total, keep=keep)

    # ---------------------------------------------------------------- training
    def optimizer(self, **hyper: Any) -> SparseAdamW:
        """SparseAdamW (``lr``, ``betas``, ``eps``, ``weight_decay``) over the selection and
        the dense modules; every other parameter is frozen. Made before :meth:`estimate`, its
        selection is empty until the estimate (only the dense modules train)."""
        for name, param in self.model.named_parameters():
            param.requires_grad_(name in self.dense)  # SparseAdamW unfreezes the selected
        selection = self.selection
        if selection is None:
            selection = Selection.empty(self._shapes())
        trainable = [*self.candidates.values(), *self.dense.values()]
        self._optimizer = SparseAdamW(trainable, selection, self.candidates, **hyper)
        return self._optimizer

    @property
    def held_optimizer(self) -> SparseAdamW | None:
        """The optimiser :meth:`optimizer` made last (None before)."""
        return self._optimizer

    def step(self) -> None:
        """Count one training step; on every ``refresh_every``-th, grow the selection to the
        schedule's share (nested: nothing selected is dropped) and hand it to the optimiser.
        Before :meth:`estimate` the step is only counted."""
        if self._optimizer is None:
            raise RuntimeError("call optimizer() before step()")
        self.steps_done += 1
        if self.selection is None:
            return
        if self.steps_done % self.config.refresh_every == 0:
            grown = self._top(self.steps_done, self.selection)
            if grown.count > self.selection.count:
                self.selection = grown
                self._optimizer.update_selection(grown)

    def save(self, path: str | Path) -> Path:
        """The trained elements and the dense modules, as a deltas file
        (:func:`~fishertune.finetune.deltas.save_deltas`)."""
        if self.selection is None:
            raise RuntimeError("call estimate(batches) before save(): nothing is selected")
        return save_deltas(self.model, self.selection, path, dense=list(self.dense))

    # ---------------------------------------------------------------- resuming
    def save_state(self, path: str | Path) -> Path:
        """What a resumed run needs besides the model and the optimiser: the scores of the
        elements the final share can select (the nested growth never looks further), the
        selection and the step count, with the schedule's options (a checked file)."""
        if self.scores is None or self.selection is None:
            raise RuntimeError("call estimate(batches) before save_state(): nothing is selected")
        ranked = top_k(self.scores, fraction=self.config.fraction, total=self.total)
        tensors: dict[str, Tensor] = {}
        for name, index in ranked.items():
            tensors[name + _RANKED] = index
            tensors[name + _SCORES] = self.scores[name].reshape(-1)[index]
            tensors[name + _SELECTED] = self.selection[name]
        metadata = {
            "steps_done": str(self.steps_done),
            "schedule": json.dumps(self._schedule()),
            "shapes": json.dumps({n: list(shape) for n, shape in self._shapes().items()}),
        }
        return save_checked(path, tensors, STATE_FORMAT, metadata)

    def load_state(self, path: str | Path) -> None:
        """Restore :meth:`save_state`'s file into this tuner (same model and schedule), and
        its selection into the optimiser if there is one; later growth then equals the
        uninterrupted run's."""
        file = Path(path)
        tensors, metadata = load_checked(file, STATE_FORMAT, "tuner state")
        if json.loads(metadata["schedule"]) != self._schedule():
            raise ValueError(
                f"{file}: saved with the schedule {metadata['schedule']}, this tuner has "
                f"{json.dumps(self._schedule())}"
            )
        shapes = {n: list(shape) for n, shape in self._shapes().items()}
        if json.loads(metadata["shapes"]) != shapes:
            raise ValueError(f"{file}: its candidate tensors differ from this model's")
        scores: dict[str, Tensor] = {}
        selected: dict[str, Tensor] = {}
        for name, param in self.candidates.items():
            score = torch.full((param.numel(),), -math.inf, device=param.device)
            score[tensors[name + _RANKED].to(param.device, torch.int64)] = tensors[
                name + _SCORES
            ].to(param.device)
            scores[name] = score.reshape(param.shape)
            selected[name] = tensors[name + _SELECTED].to(param.device)
        self.scores = scores
        self.selection = Selection(selected, self._shapes())
        self.steps_done = int(metadata["steps_done"])
        if self._optimizer is not None and self._optimizer.selection.count != self.selection.count:
            self._optimizer.update_selection(self.selection)

    def _shapes(self) -> dict[str, torch.Size]:
        """Every candidate tensor's shape, by name."""
        return {name: param.shape for name, param in self.candidates.items()}

    def _schedule(self) -> dict[str, Any]:
        return {field: getattr(self.config, field) for field in _SCHEDULE_FIELDS}


def _coef(shift: FeaturePerturbation | None) -> float:
    """c of the shift (method.md §5); 1 without one (the domain term is then unused)."""
    return 1.0 if shift is None else shift.coef
