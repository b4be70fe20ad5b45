"""One place that turns every command's failures into one line and an exit status.

Bad input (a configuration value, a missing or corrupt file, an unusable device, a full or
read-only disk) prints ``fishertune COMMAND: error: MESSAGE`` on stderr and exits 2; a
training run stopped by a non-finite loss exits 1; Ctrl-C says the run was interrupted and,
for the commands that resume, how to continue, and exits 130 (the shell's code for SIGINT).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from safetensors import SafetensorError

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_USAGE",
    "check_output_file",
    "check_output_folder",
    "run_guarded",
]

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

Handler = Callable[[argparse.Namespace], int]


def _os_message(error: OSError) -> str:
    """``strerror: filename`` where the error carries them (no ``[Errno N]`` noise)."""
    if error.strerror and error.filename is not None:
        return f"{error.strerror}: {error.filename}"
    return error.strerror or str(error)


def check_output_file(path: str, option: str) -> None:
    """Before any work: ``path`` can be written as a file (its folder is created)."""
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"{option} {path}: is a directory; expected a file path")
    check_output_folder(str(target.parent), option)
    if target.exists() and not os.access(target, os.W_OK):
        raise ValueError(f"{option} {path}: the file exists and cannot be overwritten")


def check_output_folder(path: str, option: str) -> None:
    """Before any work: ``path`` is (or is created as) a folder that can be written to."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{option} {path}: is a file; expected a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"{option} {path}: cannot create the folder ({error.strerror})") from None
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{option} {path}: the folder cannot be written to")


def run_guarded(command: str, handler: Handler, args: argparse.Namespace) -> int:
    """Run ``handler(args)`` for ``fishertune COMMAND``; failures become one line."""
    from fishertune.engine.trainer import NonFiniteLossError
    from fishertune.models import PretrainedWeightsUnavailableError

    try:
        return handler(args)
    except NonFiniteLossError as error:
        print(f"fishertune {command}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        hint = (
            "; rerun the same command with --resume to continue from the last complete checkpoint"
            if hasattr(args, "resume")
            else ""
        )
        print(f"fishertune {command}: interrupted{hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, PretrainedWeightsUnavailableError, SafetensorError) as error:
        print(f"fishertune {command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as error:  # missing files, read-only or full disks, permissions
        print(f"fishertune {command}: error: {_os_message(error)}", file=sys.stderr)
        return EXIT_USAGE
