"""The arguments several commands share: a run configuration with its overrides (and, for the
commands that run it, its folder), and a list of method names."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fishertune.engine.config import RunConfig

__all__ = ["config_arguments", "parse_methods", "run_config"]


def config_arguments(parser: argparse.ArgumentParser, *, out: bool = True) -> None:
    """``CONFIG``, ``--set KEY=VALUE`` and, with ``out``, ``--out DIR`` (the run folder)."""
    parser.add_argument("config", metavar="CONFIG", help="run configuration (YAML)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a configuration value, e.g. --set schedule.lr=2e-4 (repeatable)",
    )
    if out:
        parser.add_argument(
            "--out",
            dest="run_out",
            default=None,
            metavar="DIR",
            help="the run folder (same as --set output.run_dir=DIR; default: the config's)",
        )


def run_config(args: argparse.Namespace) -> RunConfig:
    """The configuration :func:`config_arguments` describes, overrides applied and checked."""
    from fishertune.engine.config import load_config

    out = getattr(args, "run_out", None)
    return load_config(args.config, [*args.set, *([f"output.run_dir={out}"] if out else [])])


def parse_methods(text: str, default: Sequence[str]) -> list[str]:
    """``--methods``: comma-separated registered method names (``default`` when empty); an
    unknown name is refused in one line listing the registered ones."""
    from fishertune.tuners import available_tuners

    methods = [m.strip() for m in text.split(",") if m.strip()] or list(default)
    unknown = sorted(set(methods) - set(available_tuners()))
    if unknown:
        raise ValueError(f"--methods: unknown {unknown}; choose from {available_tuners()}")
    return methods
