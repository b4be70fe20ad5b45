"""The registry of tuning methods: names → classes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fishertune.models.segmentor import Segmentor
from fishertune.tuners.base import Tuner, TunerConfig

_REGISTRY: dict[str, type[Tuner]] = {}
T = TypeVar("T", bound=type[Tuner])


def register(name: str) -> Callable[[T], T]:
    """Class decorator registering a tuner under ``name`` (the key of ``build_tuner``)."""

    def add(cls: T) -> T:
        if name in _REGISTRY:
            raise ValueError(f"tuner {name!r} is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return add


def available_tuners() -> list[str]:
    """Names of all registered methods."""
    return sorted(_REGISTRY)


def tuner_class(name: str) -> type[Tuner]:
    """The class registered under ``name`` (clear error listing the known names)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown tuner {name!r}; available: {', '.join(available_tuners())}")
    return _REGISTRY[name]


def build_tuner(
    name: str, segmentor: Segmentor, config: TunerConfig | None = None, **options: Any
) -> Tuner:
    """Create the method ``name`` from its typed ``config`` or from keyword ``options`` (its
    config fields) and apply it to ``segmentor``."""
    return tuner_class(name)(config, **options).apply(segmentor)
