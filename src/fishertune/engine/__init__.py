"""The staged trainer's infrastructure (method.md §8): run configuration and checkpoints.

``load_config(path, overrides)`` reads and validates a :class:`RunConfig`;
``save_checkpoint`` / ``load_checkpoint`` / ``latest_checkpoint`` write and find atomic,
pickle-free checkpoints, with helpers for RNG and optimiser state.
"""

from fishertune.engine.checkpoint import (
    capture_rng_state,
    flatten_optimizer_state,
    latest_checkpoint,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
    unflatten_optimizer_state,
    weights_reference,
)
from fishertune.engine.config import (
    DataConfig,
    EvaluationConfig,
    MethodConfig,
    ModelConfig,
    OutputConfig,
    RunConfig,
    ScheduleConfig,
    config_from_dict,
    load_config,
    parse_override,
)

__all__ = [
    "DataConfig",
    "EvaluationConfig",
    "MethodConfig",
    "ModelConfig",
    "OutputConfig",
    "RunConfig",
    "ScheduleConfig",
    "capture_rng_state",
    "config_from_dict",
    "flatten_optimizer_state",
    "latest_checkpoint",
    "load_checkpoint",
    "load_config",
    "parse_override",
    "restore_rng_state",
    "save_checkpoint",
    "unflatten_optimizer_state",
    "weights_reference",
]
