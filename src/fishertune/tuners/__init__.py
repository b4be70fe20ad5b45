"""Tuning methods under one interface: FisherTune and the baselines it is compared with.

``build_tuner(name, segmentor, **options)`` applies a method; ``available_tuners()`` lists them.
"""

from fishertune.tuners import full  # noqa: F401  (registers full, freeze)
from fishertune.tuners.base import TrainableCount, Tuner, TunerConfig
from fishertune.tuners.registry import available_tuners, build_tuner, register, tuner_class

__all__ = [
    "TrainableCount",
    "Tuner",
    "TunerConfig",
    "available_tuners",
    "build_tuner",
    "register",
    "tuner_class",
]
