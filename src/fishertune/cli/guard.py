"""One place that turns every command's failures into one line and an exit status.

Bad input (a configuration value, a missing or corrupt file, an unusable device, a full or
read-only disk) prints ``fishertune COMMAND: error: MESSAGE`` on stderr and exits 2; a
training run stopped by a non-finite loss exits 1; Ctrl-C says the run was interrupted and,
for the commands that resume, how to continue, and exits 130 (the shell's code for SIGINT).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from safetensors import SafetensorError

__all__ = ["EXIT_INTERRUPTED", "EXIT_USAGE", "run_guarded"]

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

Handler = Callable[[argparse.Namespace], int]


def _os_message(error: OSError) -> str:
    """``strerror: filename`` where the error carries them (no ``[Errno N]`` noise)."""
    if error.strerror and error.filename is not None:
        return f"{error.strerror}: {error.filename}"
    return error.strerror or str(error)


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
