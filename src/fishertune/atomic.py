"""Atomic file writes: a reader sees the old file, no file, or the complete new one.

Used for checkpoints, run logs, reports and the demo backbone's weights. The content is written
to a temporary file in the target's directory, flushed to disk, made world-readable (``mkstemp``
creates it private) and renamed over the target (``os.replace``); the directory entry is then
flushed too. If anything fails, the temporary file is removed.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write"]


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (no-op where directories cannot be opened)."""
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def atomic_write(target: str | os.PathLike[str], write: Callable[[Path], object]) -> None:
    """Call ``write(temporary path)``, then move the complete file onto ``target``.

    ``target``'s directory is created when missing. An ``OSError`` that names no file (a full
    disk, an I/O error) is raised again naming ``target``.
    """
    final = Path(target)
    final.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    os.close(handle)
    temporary = Path(name)
    try:
        write(temporary)
        with temporary.open("rb+") as file:
            os.fsync(file.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, final)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        if error.filename is None:
            raise OSError(error.errno, error.strerror or str(error), str(final)) from error
        raise
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(final.parent)
