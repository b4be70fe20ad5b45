"""The typed run configuration: nested dataclasses loaded from YAML, validated (method.md §8).

A run is described by six sections: ``model``, ``method``, ``data``, ``schedule``,
``evaluation`` and ``output``. :func:`load_config` reads a YAML file (every key optional; the
defaults are the paper's settings: Mask2Former, crop 512, batch 4, 40k iterations, AdamW lr
1e-4, weight decay 0.05, poly 0.9), applies ``--set``-style overrides ``"a.b=value"`` and
validates the result: unknown keys, wrong types and values outside an enumeration raise a
``ValueError`` naming the full dotted key and what is allowed. :meth:`RunConfig.to_dict` gives
the plain data recorded in checkpoints and reports.

Scalars are read with YAML rules, except that ``1e-4`` (no dot) is a float, not the string
YAML 1.1 would make of it.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from fishertune.data.registry import DATASETS, TRAINABLE_DATASETS
from fishertune.data.synthetic import SyntheticSettings
from fishertune.evaluation.protocols import PROTOCOLS
from fishertune.label_space import CITYSCAPES_CLASSES
from fishertune.tuners import available_tuners, tuner_class
from fishertune.tuners.base import TunerConfig, UnknownOptionError, make_config

LOCATION_KEYS = frozenset({"output.run_dir"})
"""Configuration keys that say where a run lives, not what it is."""

__all__ = [
    "LOCATION_KEYS",
    "DataConfig",
    "EvaluationConfig",
    "MethodConfig",
    "ModelConfig",
    "OutputConfig",
    "RunConfig",
    "ScheduleConfig",
    "config_from_dict",
    "load_config",
    "parse_override",
]

Head = Literal["linear", "mask2former"]
Amp = Literal["auto", "bf16", "off"]
EvalMode = Literal["slide", "whole"]


@dataclass
class ModelConfig:
    """The segmentor (:func:`fishertune.models.build_segmentor`).

    Attributes:
        backbone: timm name of the vision foundation model.
        head: ``"mask2former"`` (the paper's decoder) or ``"linear"`` (the fast probe).
        img_size: input size the backbone's position embeddings are built for: one int
            (square) or ``[H, W]``.
        patch_size: patch size override (``None``: the model's own).
        checkpoint: local file of backbone weights (``None``: timm's pretrained weights).
        pretrained: load pretrained weights (``False``: random initialisation, for tests).
        num_classes: number of segmentation classes (19 Cityscapes classes).
        options: further keyword arguments of the timm model (e.g. ``depth``).
        head_options: keyword arguments of the head (e.g. ``{subpixel: 4}`` for the linear
            head's sub-pixel classifier).
    """

    backbone: str = "vit_large_patch14_dinov2.lvd142m"
    head: Head = "mask2former"
    img_size: int | list[int] = 512
    patch_size: int | None = None
    checkpoint: str | None = None
    pretrained: bool = True
    num_classes: int = 19
    options: dict[str, Any] = field(default_factory=dict)
    head_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from fishertune.models.build import backbone_option_names, head_option_names

        checks = [
            ("model.options", self.options, backbone_option_names(self.backbone)),
            ("model.head_options", self.head_options, head_option_names(self.head)),
        ]
        for key, given, allowed in checks:
            if allowed is None:  # a timm model whose options are checked when it is built
                continue
            unknown = sorted(str(k) for k in given if k not in allowed)
            if unknown:
                raise ValueError(
                    f"unknown key(s) {', '.join(f'{key}.{k}' for k in unknown)} for "
                    f"{self.backbone if key == 'model.options' else self.head!r}; allowed: "
                    f"{sorted(allowed)}"
                )

    @property
    def image_size(self) -> tuple[int, int]:
        """``img_size`` as ``(H, W)``."""
        return _pair(self.img_size)


@dataclass
class MethodConfig:
    """The tuning method: its registered name and its options as written (what a run records).

    The options are parsed once, when the section is built: unknown keys, types and the
    method's own range checks raise a ValueError naming the ``method.options`` key, and the
    typed result is :attr:`settings`, the object the tuner is built from.
    """

    name: str = "fishertune"
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._settings = _method_settings(self.name, self.options)

    @property
    def settings(self) -> TunerConfig:
        """The method's typed configuration (its config class) built from :attr:`options`."""
        return self._settings


@dataclass
class DataConfig:
    """Training and test data.

    Attributes:
        source: source (training) dataset name, e.g. ``"gtav"``, or ``"synthetic"`` (the
            embedded benchmark, trained on its labelled source style); a registered data set
            that declares a training split.
        root: the source dataset's root directory (``None`` for synthetic data).
        targets: unseen target domains evaluated during and after training: dataset names,
            or, for a source of several domains (the embedded benchmark), its other domains
            (the styles).
        roots: root directory of each target dataset (not needed for synthetic styles).
        crop: training crop size: one int (square) or ``[H, W]``.
        batch_size: images per micro-batch over all processes (the global batch; each of N
            processes takes 1/N of it).
        workers: data-loader worker processes.
        train_images: use only the first this many source images (``None``: all; for
            ``"synthetic"`` the number of scenes generated).
        eval_images: evaluate on the first this many images of each domain (``None``: all;
            for synthetic styles the number of scenes generated, 500 by default).
        synthetic_size: ``[H, W]`` of the embedded benchmark's images.
        scale_range: the training pipeline's random rescale ratios ``[low, high]`` around the
            crop's short side (Rein's ``[0.5, 2.0]``).
        val_share: for a source that declares no validation split (GTAV, SYNTHIA), the share
            of its training images held out (the last ones) as its validation set, which
            makes ``best`` checkpoints possible; 0: none (the run keeps ``last`` only).
        synthetic_seed: which scenes the embedded benchmark generates (its training and
            evaluation sets). Fixed across ``schedule.seed``: like a real data set, the scenes
            stay while the run's seed varies the training's randomness.
    """

    source: str = "gtav"
    root: str | None = None
    targets: list[str] = field(default_factory=lambda: ["cityscapes", "bdd100k", "mapillary"])
    roots: dict[str, str] = field(default_factory=dict)
    crop: int | list[int] = 512
    batch_size: int = 4
    workers: int = 4
    train_images: int | None = None
    eval_images: int | None = None
    synthetic_size: list[int] = field(default_factory=lambda: list(SyntheticSettings().size))
    synthetic_seed: int = 0
    val_share: float = 0.0
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])

    @property
    def crop_size(self) -> tuple[int, int]:
        """``crop`` as ``(H, W)``."""
        return _pair(self.crop)

    @property
    def synthetic(self) -> SyntheticSettings:
        """``synthetic_size`` and ``synthetic_seed``: the embedded benchmark's settings."""
        height, width = self.synthetic_size
        return SyntheticSettings(size=(height, width), seed=self.synthetic_seed)


@dataclass
class ScheduleConfig:
    """The staged schedule (warm-up T1 → estimation T2 → tuning T3) and the optimiser.

    Attributes:
        warmup_steps: T1, decoder-only training steps with the backbone frozen.
        estimate_steps: T2, DR-FIM estimation steps (no weight update).
        tune_steps: T3, steps training the decoder and the selected backbone elements;
            ``warmup_steps + tune_steps`` is the paper's 40k iterations.
        lr: AdamW base learning rate.
        decoder_lr_mult: learning-rate multiplier of the decoder (neck and head) for every
            method (1: as Rein); the methods' own multipliers scale the backbone side.
        weight_decay: AdamW decoupled weight decay.
        poly_power: power of the poly learning-rate decay.
        lr_warmup_iters: linear learning-rate warm-up iterations (0: none, as Rein).
        grad_accumulation: micro-batches accumulated per optimiser step.
        grad_clip: maximum gradient norm (``None``: no clipping).
        amp: mixed precision: ``"auto"`` (bf16 where supported), ``"bf16"`` or ``"off"``.
        ema: decay of an exponential moving average of the weights (``None``: none).
        eval_every: steps between evaluations (0: only at the end).
        checkpoint_every: steps between checkpoints (0: only at the end).
        seed: seed of every random number generator.
    """

    warmup_steps: int = 2000
    estimate_steps: int = 100
    tune_steps: int = 38000
    lr: float = 1e-4
    decoder_lr_mult: float = 1.0
    weight_decay: float = 0.05
    poly_power: float = 0.9
    lr_warmup_iters: int = 0
    grad_accumulation: int = 1
    grad_clip: float | None = None
    amp: Amp = "auto"
    ema: float | None = None
    eval_every: int = 4000
    checkpoint_every: int = 4000
    seed: int = 0


@dataclass
class EvaluationConfig:
    """How targets are evaluated: a protocol of :mod:`fishertune.evaluation.protocols`."""

    protocol: str = "rein"
    mode: EvalMode = "slide"


@dataclass
class OutputConfig:
    """Where the run writes checkpoints, logs and reports."""

    run_dir: str = "runs/default"


@dataclass
class RunConfig:
    """A whole run: the six sections."""

    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    @property
    def total_steps(self) -> int:
        """Training iterations (warm-up and tuning; estimation steps do not update weights)."""
        return self.schedule.warmup_steps + self.schedule.tune_steps

    def to_dict(self) -> dict[str, Any]:
        """Plain (JSON- and YAML-serialisable) data; :func:`config_from_dict` reads it back."""
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, dict[str, Any]]:
        """What makes two runs the same run: :meth:`to_dict` less :data:`LOCATION_KEYS` (a
        run directory that was moved resumes)."""
        return {
            section: {k: v for k, v in values.items() if f"{section}.{k}" not in LOCATION_KEYS}
            for section, values in self.to_dict().items()
        }

    def is_run(self, recorded: Mapping[str, Any]) -> bool:
        """Whether a recorded :meth:`identity` is this configuration's run: equal, where a key
        the record lacks counts as equal when this configuration leaves it at its default (a
        key added to the configuration since cannot have changed what the run did)."""
        current = self.identity()
        defaults = RunConfig().identity()
        for section, values in current.items():
            written = recorded.get(section, {})
            for key in [k for k in values if k not in written]:
                if values[key] == defaults.get(section, {}).get(key):
                    del values[key]
        return dict(recorded) == current


class _Loader(yaml.SafeLoader):
    """YAML's safe loader that also reads ``1e-4`` (exponent without a dot) as a float and
    refuses a key given twice in one mapping (plain YAML keeps the last silently)."""


def _unique_mapping(loader: _Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    """A mapping whose keys are all distinct; a repeated key names itself and its line."""
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


_FLOAT = re.compile(
    r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
    r"|[0-9][0-9_]*[eE][-+]?[0-9]+|\.(?:inf|Inf|INF)|[-+]\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def _check_ranges(config: RunConfig) -> None:
    """Range checks that types cannot express."""
    checks: list[tuple[str, Any, bool]] = [
        ("model.img_size", config.model.img_size, _is_size(config.model.img_size)),
        ("data.crop", config.data.crop, _is_size(config.data.crop)),
        ("data.synthetic_size", config.data.synthetic_size, _is_size(config.data.synthetic_size)),
        ("data.synthetic_seed", config.data.synthetic_seed, config.data.synthetic_seed >= 0),
        (
            "data.scale_range",
            config.data.scale_range,
            len(config.data.scale_range) == 2
            and 0 < config.data.scale_range[0] <= config.data.scale_range[1],
        ),
        ("data.batch_size", config.data.batch_size, config.data.batch_size > 0),
        ("data.workers", config.data.workers, config.data.workers >= 0),
        ("schedule.lr", config.schedule.lr, config.schedule.lr > 0),
        (
            "schedule.decoder_lr_mult",
            config.schedule.decoder_lr_mult,
            config.schedule.decoder_lr_mult > 0,
        ),
        ("schedule.weight_decay", config.schedule.weight_decay, config.schedule.weight_decay >= 0),
        ("schedule.poly_power", config.schedule.poly_power, config.schedule.poly_power >= 0),
        (
            "schedule.grad_accumulation",
            config.schedule.grad_accumulation,
            config.schedule.grad_accumulation > 0,
        ),
    ]
    for name in (
        "warmup_steps",
        "estimate_steps",
        "tune_steps",
        "lr_warmup_iters",
        "eval_every",
        "checkpoint_every",
    ):
        value = getattr(config.schedule, name)
        checks.append((f"schedule.{name}", value, value >= 0))
    for name in ("train_images", "eval_images"):
        count = getattr(config.data, name)
        checks.append((f"data.{name}", count, count is None or count > 0))
    ema = config.schedule.ema
    checks.append(("schedule.ema", ema, ema is None or 0.0 < ema < 1.0))
    clip = config.schedule.grad_clip
    checks.append(("schedule.grad_clip", clip, clip is None or clip > 0))
    for section in dataclasses.fields(config):
        part = getattr(config, section.name)
        for item in dataclasses.fields(part):
            _check_finite(f"{section.name}.{item.name}", getattr(part, item.name))
    for key, value, ok in checks:
        if not ok:
            raise ValueError(f"{key}: invalid value {value!r} (out of range)")
    labels = len(CITYSCAPES_CLASSES)
    if config.model.num_classes < labels:
        raise ValueError(
            f"model.num_classes: {config.model.num_classes} is fewer than the {labels} classes "
            f"of data.source {config.data.source!r}, whose labels are the Cityscapes train ids "
            f"0–{labels - 1}"
        )
    if config.total_steps == 0:
        raise ValueError(
            "schedule.warmup_steps + schedule.tune_steps is 0: give at least one training step"
        )
    _check_data_names(config.data)
    if config.evaluation.protocol not in PROTOCOLS:
        raise ValueError(
            f"evaluation.protocol: {config.evaluation.protocol!r} is not one of the allowed "
            f"values {sorted(PROTOCOLS)}"
        )


def _check_finite(key: str, value: Any) -> None:
    """Every float in ``value`` (nested lists and mappings too) must be finite."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{key}: invalid value {value!r} (must be a finite number)")
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_finite(f"{key}[{i}]", item)
    if isinstance(value, dict):
        for name, item in value.items():
            _check_finite(f"{key}.{name}", item)


def _method_settings(name: str, options: Mapping[str, Any]) -> TunerConfig:
    """The method ``name``'s config class built from ``options``: a registered method, known
    keys, finite numbers, the field types (where this reader models them) and the class's own
    checks, each failure a ValueError naming the ``method`` key."""
    if name not in available_tuners():
        raise ValueError(
            f"method.name: {name!r} is not one of the allowed values {available_tuners()}"
        )
    _check_finite("method.options", dict(options))
    cls = tuner_class(name).config_class
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for key, value in options.items():
        try:
            values[key] = _convert(f"method.options.{key}", hints[key], value)
        except (KeyError, TypeError):  # unknown (named below) or a type the class checks
            values[key] = value
    try:
        return make_config(cls, values, f"method {name!r}")
    except UnknownOptionError as error:
        raise ValueError(f"method.options: {error}") from None
    except (TypeError, ValueError) as error:
        raise ValueError(f"method.options ({name}): {error}") from None


def _check_data_names(data: DataConfig) -> None:
    """The source must be a registered data set with a training split; the targets the source's
    other domains when it has several (the synthetic benchmark's styles), else data sets."""
    if data.source not in TRAINABLE_DATASETS:
        raise ValueError(
            f"data.source: {data.source!r} is not one of the allowed values "
            f"{list(TRAINABLE_DATASETS)} (the data sets with a training split)"
        )
    domains = DATASETS[data.source].domains
    if domains:
        allowed, what = domains[1:], f"domains of {data.source!r}"
    else:
        allowed = tuple(name for name, cls in DATASETS.items() if not cls.domains)
        what = "datasets"
    for i, target in enumerate(data.targets):
        if target not in allowed:
            raise ValueError(
                f"data.targets[{i}]: {target!r} is not one of the allowed {what} {sorted(allowed)}"
            )
    if not 0.0 <= data.val_share < 1.0:
        raise ValueError(f"data.val_share: expected a share in [0, 1), got {data.val_share}")
    source = DATASETS[data.source]
    if data.val_share > 0.0 and source.has_validation_split():
        raise ValueError(
            f"data.val_share: {data.source!r} has its own validation split "
            f"{source.eval_split!r}; the share is for sources without one (e.g. gtav)"
        )


def _pair(size: int | list[int]) -> tuple[int, int]:
    """An int or ``[H, W]`` size as ``(H, W)``."""
    if isinstance(size, int):
        return size, size
    return size[0], size[1]


def _is_size(size: int | list[int]) -> bool:
    """Whether ``size`` is a positive int or a list of two positive ints."""
    values = [size] if isinstance(size, int) else size
    return (isinstance(size, int) or len(size) == 2) and all(v > 0 for v in values)


def _type_name(annotation: Any) -> str:
    """Readable name of a field type for error messages."""
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _convert(key: str, annotation: Any, value: Any) -> Any:
    """``value`` checked (and int → float widened) against ``annotation``; ValueError names
    ``key``, the expected type and the value otherwise."""
    origin = get_origin(annotation)
    if origin is Literal:
        allowed = get_args(annotation)
        if value not in allowed or isinstance(value, bool):
            raise ValueError(f"{key}: {value!r} is not one of the allowed values {list(allowed)}")
        return value
    if origin in (Union, types.UnionType):
        members = get_args(annotation)
        if value is None and type(None) in members:
            return None
        for member in members:
            if member is type(None):
                continue
            try:
                return _convert(key, member, value)
            except ValueError:
                continue
        raise _type_error(key, annotation, value)
    if origin is list:
        (item,) = get_args(annotation)
        if not isinstance(value, list):
            raise _type_error(key, annotation, value)
        return [_convert(f"{key}[{i}]", item, v) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise _type_error(key, annotation, value)
        return dict(value)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _type_error(key, annotation, value)
        return float(value)
    if annotation is int or annotation is str or annotation is bool:
        if not isinstance(value, annotation) or (annotation is int and isinstance(value, bool)):
            raise _type_error(key, annotation, value)
        return value
    raise TypeError(f"{key}: unsupported field type {annotation!r}")


def _type_error(key: str, annotation: Any, value: Any) -> ValueError:
    return ValueError(
        f"{key}: expected {_type_name(annotation)}, got {value!r} ({type(value).__name__})"
    )


def _build_section(cls: type[Any], data: Any, prefix: str) -> Any:
    """An instance of the dataclass ``cls`` from the mapping ``data`` (missing keys default)."""
    if not isinstance(data, Mapping):
        raise ValueError(
            f"{prefix or 'config'}: expected a mapping of keys to values, got {data!r}"
        )
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [str(k) for k in data if k not in fields]
    if unknown:
        where = f"section {prefix!r}" if prefix else "the top level"
        names = ", ".join(f"{prefix}.{k}" if prefix else k for k in unknown)
        raise ValueError(f"unknown key(s) {names}; allowed keys in {where}: {sorted(fields)}")
    values: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation):
            values[name] = _build_section(annotation, value, key)  # type: ignore[arg-type]
        else:
            values[name] = _convert(key, annotation, value)
    return cls(**values)


def config_from_dict(data: Mapping[str, Any]) -> RunConfig:
    """A validated :class:`RunConfig` from nested plain data (e.g. :meth:`RunConfig.to_dict`)."""
    config: RunConfig = _build_section(RunConfig, data, "")
    _check_ranges(config)
    return config


MAX_VALUES = 100_000
"""The most values (mapping entries and list items, YAML aliases expanded) a configuration
may hold: a real one holds about a hundred; more is an alias bomb or a wrong file."""
MAX_DEPTH = 64
"""The deepest nesting a configuration may have (a real one nests four levels)."""


def _yaml_problem(error: yaml.YAMLError) -> str:
    """One line for a YAML error: what is wrong and where (PyYAML prints several)."""
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    mark = getattr(error, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


def _read_yaml(text: str, what: str) -> Any:
    """``text`` read as YAML, bounded in depth and size; errors are one line naming ``what``."""
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as error:
        raise ValueError(f"{what} is not valid YAML: {_yaml_problem(error)}") from None
    except RecursionError:
        raise ValueError(f"{what} is nested too deeply (at most {MAX_DEPTH} levels)") from None
    _check_size(data, what)
    return data


def _check_size(data: Any, what: str) -> None:
    """Refuse data nested deeper than MAX_DEPTH or holding more than MAX_VALUES values, counting
    every use of a YAML alias (the walk stops as soon as a bound is passed)."""
    stack: list[tuple[Any, int]] = [(data, 0)]
    count = 0
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ValueError(f"{what} is nested too deeply (at most {MAX_DEPTH} levels)")
        children = (
            list(value.values())
            if isinstance(value, dict)
            else value
            if isinstance(value, list)
            else []
        )
        count += len(children)
        if count > MAX_VALUES:
            raise ValueError(
                f"{what} holds more than {MAX_VALUES:,} values (YAML aliases expanded); "
                "a run configuration holds about a hundred"
            )
        stack.extend((child, depth + 1) for child in children)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``"a.b=value"`` into the dotted key path and the value read as a YAML scalar."""
    key, sep, raw = text.partition("=")
    path = key.strip().split(".")
    if not sep or not all(path):
        raise ValueError(f"override {text!r} must have the form section.key=value")
    value = _read_yaml(raw, f"override {key.strip()!r}") if raw.strip() else ""
    return path, value


def _apply_override(data: dict[str, Any], text: str) -> None:
    """Set the value of one override in the nested ``data``, creating mappings as needed."""
    path, value = parse_override(text)
    node = data
    for depth, part in enumerate(path[:-1]):
        child = node.setdefault(part, {})
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            dotted = ".".join(path[: depth + 1])
            raise ValueError(f"override {text!r}: {dotted} is a value, not a section")
        node = child
    node[path[-1]] = value


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a run configuration from YAML (``None``: defaults), apply overrides, validate.

    ``overrides`` are ``"section.key=value"`` strings (``method.options.variant=dF``) whose
    values follow YAML scalar rules (``schedule.lr=2e-4`` is a float, ``model.checkpoint=null``
    is ``None``).
    """
    data: Any = {}
    if path is not None:
        file = Path(path)
        if file.is_dir():
            raise ValueError(f"config file {file} is a directory; expected a YAML file")
        try:
            text = file.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise FileNotFoundError(f"config file {file} does not exist") from None
        except UnicodeDecodeError:
            raise ValueError(f"config file {file} is not UTF-8 text (a YAML file?)") from None
        except OSError as error:
            raise ValueError(f"config file {file} cannot be read: {error.strerror}") from None
        data = _read_yaml(text, f"config file {file}")
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ValueError(f"config file {file}: expected a mapping of sections, got {data!r}")
    written = dict(data["method"]) if isinstance(data.get("method"), dict) else {}
    for override in overrides:
        _apply_override(data, override)
    _drop_other_methods_options(data, written, overrides)
    return config_from_dict(data)


def _drop_other_methods_options(
    data: dict[str, Any], written: Mapping[str, Any], overrides: Sequence[str]
) -> None:
    """An override of ``method.name`` to another method drops the file's ``method.options``
    (they are the file's method's), with a notice, unless the overrides set options too."""
    method = data.get("method")
    if not isinstance(method, dict) or not written.get("options"):
        return
    keys = [parse_override(text)[0] for text in overrides]
    renamed = any(path[:2] == ["method", "name"] for path in keys)
    optioned = any(path[:2] == ["method", "options"] for path in keys)
    before, after = written.get("name", MethodConfig.name), method.get("name")
    if renamed and not optioned and after != before:
        method["options"] = {}
        print(
            f"notice: method.name {before!r} → {after!r}: the configuration's method.options "
            f"(for {before!r}) are not used; give --set method.options=... for {after!r}",
            file=sys.stderr,
        )
