"""Tuning methods under one interface: FisherTune and the baselines it is compared with.

``build_tuner(name, segmentor, **options)`` applies a method; ``available_tuners()`` lists them.
"""

# Importing the method modules registers them.
from fishertune.tuners import (  # noqa: F401
    adaptformer,
    childtune,
    fishertune,
    full,
    lora,
    manual,
    random_selection,
    rein,
    vpt,
    vqt,
)
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
