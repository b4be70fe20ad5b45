"""The interface every tuning method implements, and what they share (method.md §7–§10).

A tuner is applied to a :class:`~fishertune.models.Segmentor`: it freezes the backbone, then
decides what in it trains and adds what the method needs (adapters, prompts, masks); the
decoder (neck and head) always trains. It then reports its trainable sizes, builds the
optimiser with Rein's parameter-group conventions, saves only what it changed and, where the
method allows, merges itself into a plain segmentor.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Iterator, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from fishertune.models.backbone import Backbone
from fishertune.models.parameter_groups import ParameterGroup
from fishertune.models.segmentor import Segmentor
from fishertune.selection import Selection
from fishertune.sensitivity import EstimateQuality, FeaturePerturbation, entry_perturbation

NO_DECAY_MODULES = ("norm", "query_embed", "query_feat", "queries_embedder", "queries_features")
"""No weight decay inside modules whose name contains one of these (Rein's optimiser setup)."""
NO_DECAY_LEAVES = ("token", "scale", "pos_embed", "level_embed")
"""No weight decay on parameters whose own name contains one of these (tokens, scales, ...)."""


def decays(name: str) -> bool:
    """Whether the parameter ``name`` gets weight decay: not norms, tokens, embeddings, scales."""
    *modules, leaf = name.split(".")
    if any(key in module for module in modules for key in NO_DECAY_MODULES):
        return False
    return not any(key in leaf for key in NO_DECAY_LEAVES)


@dataclass
class TunerConfig:
    """Options every method accepts (defaults = the paper's).

    Attributes:
        train_perturbation: keep the DSU feature perturbation (method.md §4) active during
            training as well (paper Table 5); it perturbs the tokens entering the first block.
        perturbation_scale: s of that perturbation.
        backbone_lr_mult: learning-rate multiplier of trained backbone weights (Rein uses 0.1
            for full fine-tuning); added modules (adapters, prompts) use ``adapter_lr_mult``.
        adapter_lr_mult: learning-rate multiplier of the parameters a method adds.
    """

    train_perturbation: bool = False
    perturbation_scale: float = 1.0
    backbone_lr_mult: float = 1.0
    adapter_lr_mult: float = 1.0


TC = TypeVar("TC", bound=TunerConfig)


@dataclass(frozen=True)
class TrainableCount:
    """Trainable parameter counts, backbone side (incl. adapters) and decoder side."""

    backbone: int
    decoder: int


class Tuner:
    """Base class of the tuning methods; subclasses set ``name`` and ``config_class``.

    Subclasses implement :meth:`attach` (what trains in the backbone, what is added) and may
    override :meth:`backbone_trainable`, :meth:`make_optimizer`, :meth:`after_backward`,
    :meth:`on_step`, :meth:`saved_state` / :meth:`load_saved`, :meth:`merge` and
    :meth:`undo`. What :meth:`attach` adds goes through :meth:`add_module` and :meth:`keep`
    (hook handles), so that :meth:`detach` can take every method off a model again.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type[TunerConfig]] = TunerConfig
    added_modules: ClassVar[tuple[type[nn.Module], ...]] = ()
    """Types of the modules the method adds to the segmentor (adapters, prompts, factors)."""
    estimates: ClassVar[bool] = False
    """Whether the method has an estimation stage (method.md §8, FisherTune's Algorithm 1):
    the trainer then runs T1 decoder-only warm-up steps, :meth:`estimate` on T2 source batches
    and T3 tuning steps; every other method trains in one stage of T1 + T3 steps."""

    def __init__(self, config: TunerConfig | None = None, **options: Any) -> None:
        if config is not None and options:
            raise ValueError("give either a config object or keyword options, not both")
        if config is not None and not isinstance(config, self.config_class):
            raise TypeError(
                f"tuner {self.name!r} needs a {self.config_class.__name__}, "
                f"got {type(config).__name__}"
            )
        self.config = (
            config
            if config is not None
            else make_config(self.config_class, options, f"tuner {self.name!r}")
        )
        self._segmentor: Segmentor | None = None
        self._perturbation: FeaturePerturbation | None = None
        self._handles: list[RemovableHandle] = []
        self._added: list[tuple[nn.Module, str]] = []
        self._grad_flags: dict[str, bool] = {}
        self.quality: EstimateQuality | None = None
        """What the estimation stage measured of its own scores (None without one)."""

    # ---------------------------------------------------------------- application
    @property
    def segmentor(self) -> Segmentor:
        """The segmentor the tuner was applied to."""
        if self._segmentor is None:
            raise RuntimeError(f"tuner {self.name!r} has not been applied to a segmentor yet")
        return self._segmentor

    def apply(self, segmentor: Segmentor) -> Tuner:
        """Freeze the backbone, let the method attach itself, train the decoder."""
        if self._segmentor is not None:
            raise RuntimeError(f"tuner {self.name!r} is already applied")
        self._segmentor = segmentor
        self._grad_flags = {n: p.requires_grad for n, p in segmentor.named_parameters()}
        segmentor.backbone.requires_grad_(False)
        self.attach(segmentor)
        segmentor.neck.requires_grad_(True)
        segmentor.head.requires_grad_(True)
        if self.config.train_perturbation:
            self._perturbation = entry_perturbation(
                backbone_of(segmentor, "the feature perturbation"),
                self.config.perturbation_scale,
                training=True,
            )
        return self

    def attach(self, segmentor: Segmentor) -> None:
        """Decide what trains in the (frozen) backbone and add the method's modules."""
        raise NotImplementedError

    def add_module(self, parent: nn.Module, name: str, module: nn.Module) -> None:
        """Add ``module`` to ``parent`` as ``name`` (refused if the name is taken), to be
        removed by :meth:`detach`."""
        if hasattr(parent, name):
            raise ValueError(
                f"{self.name}: the {type(parent).__name__} already has a `{name}` attribute "
                "(is the method applied twice?)"
            )
        parent.add_module(name, module)
        self._added.append((parent, name))

    def keep(self, handle: RemovableHandle) -> None:
        """Keep a hook's handle, to be removed by :meth:`detach`."""
        self._handles.append(handle)

    def undo(self) -> None:
        """Revert what :meth:`attach` changed besides added modules and hooks (subclasses with
        such changes override this); called by :meth:`detach`."""

    def detach(self) -> Segmentor:
        """Take the method off its segmentor and return it: hooks removed, added modules
        deleted, :meth:`undo` run, every parameter's ``requires_grad`` as before :meth:`apply`.

        Changes the training made to the backbone's own tensors (full and sparse fine-tuning)
        stay; what lived in added modules (adapters, prompts, LoRA factors not merged) goes.
        The tuner cannot be used afterwards.
        """
        segmentor = self.segmentor
        for handle in reversed(self._handles):
            handle.remove()
        self.undo()
        for parent, name in reversed(self._added):
            delattr(parent, name)
        for name, param in segmentor.named_parameters():
            param.requires_grad_(self._grad_flags.get(name, param.requires_grad))
        self._handles, self._added, self._grad_flags = [], [], {}
        self._perturbation = None
        self._segmentor = None
        return segmentor

    def train_context(self) -> Any:
        """Context for training steps: the DSU perturbation when ``train_perturbation``."""
        if self._perturbation is None:
            return nullcontext()
        return self._perturbation

    # ---------------------------------------------------------------- sizes
    def backbone_trainable(self) -> int:
        """Trainable elements on the backbone side (weights and added modules)."""
        return sum(p.numel() for p in self.segmentor.backbone.parameters() if p.requires_grad)

    def count(self) -> TrainableCount:
        """Trainable parameter counts (paper Tables 1–4 report the backbone side)."""
        decoder = sum(
            p.numel()
            for module in (self.segmentor.neck, self.segmentor.head)
            for p in module.parameters()
            if p.requires_grad
        )
        return TrainableCount(self.backbone_trainable(), decoder)

    # ---------------------------------------------------------------- optimisation
    def added_parameter_names(self) -> set[str]:
        """Segmentor-level names of the parameters the method added (adapters, prompts): those
        of its modules of the :attr:`added_modules` types."""
        return {
            f"{prefix}.{name}"
            for prefix, module in self.segmentor.named_modules()
            if isinstance(module, self.added_modules)
            for name, _ in module.named_parameters()
        }

    def param_groups(
        self,
        lr: float,
        weight_decay: float,
        decoder_lr_mult: float = 1.0,
        *,
        also: Collection[str] = (),
    ) -> list[dict[str, Any]]:
        """Optimiser groups: decoder, backbone weights, added modules, each with and without
        weight decay (none on norms, tokens, embeddings and scales, as Rein). The decoder's
        rate is ``lr × decoder_lr_mult`` (the run's ``schedule.decoder_lr_mult``), the backbone
        side's ``lr`` times the method's own multipliers. The groups hold the parameters with
        ``requires_grad`` and those named in ``also`` (segmentor names: a sparse method's
        candidate tensors, frozen until their selection grows)."""
        added = self.added_parameter_names()
        buckets: dict[tuple[str, bool], list[nn.Parameter]] = {}
        for name, param in self.segmentor.named_parameters():
            if not param.requires_grad and name not in also:
                continue
            if name in added:
                part = "adapter"
            elif name.startswith("backbone."):
                part = "backbone"
            else:
                part = "decoder"
            decay = decays(name)
            buckets.setdefault((part, decay), []).append(param)
        mults = {
            "decoder": decoder_lr_mult,
            "backbone": self.config.backbone_lr_mult,
            "adapter": self.config.adapter_lr_mult,
        }
        return [
            {
                "params": params,
                "lr": lr * mults[part],
                "weight_decay": weight_decay if decay else 0.0,
                "name": f"{part}{'' if decay else '_no_decay'}",
            }
            for (part, decay), params in sorted(buckets.items())
        ]

    def make_optimizer(
        self,
        lr: float = 1e-4,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        decoder_lr_mult: float = 1.0,
    ) -> torch.optim.Optimizer:
        """AdamW over :meth:`param_groups` (Rein's defaults: lr 1e-4, weight decay 0.05)."""
        groups = self.param_groups(lr, weight_decay, decoder_lr_mult)
        return torch.optim.AdamW(groups, lr=lr, betas=betas)

    def after_backward(self) -> None:
        """Called between backward and the optimiser step (gradient masking hooks)."""

    def on_step(self, step: int, total_steps: int) -> None:
        """Called before each training step (schedules, e.g. growing masks)."""

    def selected(self) -> Selection | None:
        """The elements of the backbone's own weights the method has selected to train; None
        for methods that select none (adapters, prompts, full and frozen backbones) and before
        a sparse method's selection exists."""
        return None

    def selectable_groups(self) -> list[ParameterGroup]:
        """The backbone elements the method selects among (its candidates, as groups of
        :func:`~fishertune.models.parameter_groups`); empty for methods that select none."""
        return []

    def keep_pretrained(self) -> None:
        """Start keeping what :meth:`pretrained_backbone` needs; call once, right after
        :meth:`apply` and before any training step, selection or loaded state. Nothing to keep
        for methods that leave the backbone's own weights as they are (this default)."""

    def pretrained_backbone(self) -> Iterator[tuple[str, Tensor]] | None:
        """Every parameter of the backbone as it was before tuning, by the names of
        ``segmentor.backbone.named_parameters()``, one tensor at a time; None for methods that
        leave the backbone's own weights as they are (this default) and, for the others, when
        :meth:`keep_pretrained` was not called."""
        return None

    def trainable_now(self) -> int:
        """Backbone-side elements training now (a growing selection counts what is selected
        so far; :meth:`backbone_trainable` is the final count)."""
        return self.backbone_trainable()

    # ---------------------------------------------------------------- estimation stage
    @property
    def has_scores(self) -> bool:
        """Whether the estimation stage's scores exist (never, without the stage)."""
        return False

    def estimate(
        self, batches: Iterable[tuple[Tensor, Tensor]], *, progress: bool = False
    ) -> dict[str, Tensor]:
        """The estimation stage on source ``batches``: score and select; returns the scores.
        Only for methods with :attr:`estimates`."""
        raise no_estimation_stage(self.name)

    def use_scores(self, scores: Mapping[str, Tensor], *, select: bool = True) -> None:
        """Adopt scores an earlier estimation stage saved (a resumed run) and, with
        ``select``, make the first selection. Only for methods with :attr:`estimates`."""
        raise no_estimation_stage(self.name)

    @property
    def scores(self) -> dict[str, Tensor]:
        """The estimation stage's scores. Only for methods with :attr:`estimates`."""
        raise no_estimation_stage(self.name)

    def generators(self) -> dict[str, torch.Generator]:
        """Random generators the method draws from while training, by name (checkpoints save
        and restore their states so a resumed run draws the same numbers)."""
        return {}

    # ---------------------------------------------------------------- saving
    def saved_state(self) -> dict[str, Tensor]:
        """What the method changed: trainable backbone tensors, added modules, the decoder.

        Keys are segmentor state-dict names. Sparse methods override this to save deltas.
        """
        trainable = {n for n, p in self.segmentor.named_parameters() if p.requires_grad}
        state = {}
        for name, tensor in self.segmentor.state_dict().items():
            if name in trainable or not name.startswith("backbone."):
                state[name] = tensor.detach().clone()
        return state

    def load_saved(self, state: Mapping[str, Tensor]) -> None:
        """Load :meth:`saved_state` output into the applied segmentor (keys must match)."""
        own = self.segmentor.state_dict()
        unknown = sorted(set(state) - set(own))
        if unknown:
            raise ValueError(
                f"saved state has keys this {self.name!r} segmentor lacks: {unknown[:10]}"
            )
        expected = set(self.saved_state())
        missing = sorted(expected - set(state))
        if missing:
            raise ValueError(f"saved state lacks keys of method {self.name!r}: {missing[:10]}")
        misshapen = [
            f"{key} {tuple(value.shape)} vs {tuple(own[key].shape)}"
            for key, value in state.items()
            if value.shape != own[key].shape
        ]
        if misshapen:
            raise ValueError(
                "saved tensors do not fit this model (saved vs model shape, another backbone?): "
                + ", ".join(misshapen[:5])
            )
        self.segmentor.load_state_dict(dict(state), strict=False)

    @property
    def perturbs_batch_statistics(self) -> bool:
        """Whether the method perturbs features by their batch statistics (DSU, method.md §4),
        which needs at least 2 images per micro-batch: here when ``train_perturbation``."""
        return self.config.train_perturbation

    def merge(self) -> None:
        """Fold the method into plain backbone weights, where the method allows it."""
        raise NotImplementedError(f"method {self.name!r} cannot be merged into the backbone")


def no_estimation_stage(name: str) -> ValueError:
    """The error of asking method ``name``, which has no estimation stage, for one."""
    return ValueError(f"method {name!r} estimates no sensitivity; use fishertune or childtune_d")


def seeded(config: TC, seed: int) -> TC:
    """``config`` with its ``seed`` set to ``seed`` when the method draws at random (its
    config has a ``seed`` field: masks, perturbations, sampled labels); unchanged otherwise."""
    values: dict[str, Any] = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    if "seed" not in values:
        return config
    return type(config)(**{**values, "seed": seed})


class UnknownOptionError(ValueError):
    """Options a method's config class does not have (:func:`make_config`)."""


def make_config(cls: type[TC], options: Mapping[str, Any], owner: str) -> TC:
    """The one way a method's options become its config class ``cls``: unknown keys are
    refused naming them, ``owner`` (e.g. ``"method 'lora'"``) and the allowed ones; the
    class's own checks give every option's range. Used by a tuner built from keyword options
    and by a run configuration when it loads (:class:`~fishertune.engine.config.MethodConfig`)."""
    allowed = sorted(f.name for f in dataclasses.fields(cls))
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise UnknownOptionError(f"unknown option(s) {unknown} for {owner}; allowed: {allowed}")
    return cls(**options)


def backbone_of(segmentor: Segmentor, user: str) -> Backbone:
    """The segmentor's backbone as a :class:`~fishertune.models.backbone.Backbone` (embedding
    width, patch size, prefix tokens, blocks, ...); a ValueError naming ``user`` (a method) when
    it lacks those attributes."""
    backbone = segmentor.backbone
    if not isinstance(backbone, Backbone):
        raise ValueError(
            f"{user} needs a ViT backbone (fishertune.models.ViTBackbone), "
            f"got a {type(backbone).__name__}"
        )
    return backbone


def named_blocks(segmentor: Segmentor) -> Iterator[tuple[int, nn.Module]]:
    """The backbone's transformer blocks with their indices."""
    yield from enumerate(backbone_of(segmentor, "a method that adapts blocks").blocks)
