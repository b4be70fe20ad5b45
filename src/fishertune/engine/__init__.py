"""The staged trainer (method.md §8) and its infrastructure.

``load_config(path, overrides)`` reads and validates a :class:`RunConfig`;
``Trainer(config).run(resume=...)`` runs warm-up → estimate → tune (one stage for methods
without estimation); ``load_trained(checkpoint)`` rebuilds a trained model;
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
from fishertune.engine.trainer import NonFiniteLossError, Trainer, TrainResult
from fishertune.engine.tuned_model import build_model, load_trained

__all__ = [
    "DataConfig",
    "EvaluationConfig",
    "MethodConfig",
    "ModelConfig",
    "NonFiniteLossError",
    "OutputConfig",
    "RunConfig",
    "ScheduleConfig",
    "TrainResult",
    "Trainer",
    "build_model",
    "capture_rng_state",
    "config_from_dict",
    "flatten_optimizer_state",
    "latest_checkpoint",
    "load_checkpoint",
    "load_config",
    "load_trained",
    "parse_override",
    "restore_rng_state",
    "save_checkpoint",
    "unflatten_optimizer_state",
    "weights_reference",
]
