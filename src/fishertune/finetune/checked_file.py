"""Safetensors files that carry their format and a SHA-256 of their tensors: written
atomically, verified on load, never unpickled (the deltas and the tuner's state)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from fishertune.atomic import atomic_write


def checksum(tensors: Mapping[str, Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{list(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_checked(
    path: str | Path, tensors: Mapping[str, Tensor], file_format: str, metadata: Mapping[str, str]
) -> Path:
    """Write ``tensors`` with ``metadata``, the ``format`` entry and their checksum."""
    contiguous = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    entries = {**metadata, "format": file_format, "sha256": checksum(contiguous)}
    target = Path(path)
    atomic_write(target, lambda file: save_file(contiguous, str(file), metadata=entries))
    return target


def load_checked(
    path: str | Path, file_format: str, what: str
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The tensors and metadata of a file written by :func:`save_checked` with
    ``file_format``; one line naming the file for a missing, unreadable, foreign or damaged
    one (``what`` names the kind of file)."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no {what} file there")
    try:
        with safe_open(str(file), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{file}: not a readable safetensors file ({error})") from None
    if metadata.get("format") != file_format:
        raise ValueError(f"{file}: not a fishertune {what} file (format {file_format!r})")
    if metadata.get("sha256") != checksum(tensors):
        raise ValueError(f"{file}: its tensors do not match their checksum (a damaged file)")
    return tensors, metadata
