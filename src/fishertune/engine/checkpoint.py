"""Atomic, pickle-free checkpoints of a staged run: tensors in safetensors, the rest in JSON.

A checkpoint ``name`` in a directory is two files:

- ``name.<generation>.safetensors``: the tuner's :meth:`~fishertune.tuners.Tuner.saved_state`
  (only what the method changed), the optimiser's state tensors
  (:func:`flatten_optimizer_state`) and the torch RNG states (:func:`capture_rng_state`), under
  caller-chosen keys; ``<generation>`` is the save time in nanoseconds (hexadecimal), so every
  save writes a new file;
- ``name.json``: everything else, JSON-serialisable (step, stage, schedule, configuration, RNG
  states of Python and NumPy, optimiser hyper-parameters and parameter-group layout, the
  base-weights reference of :func:`weights_reference`), plus the name, size and SHA-256 of
  its tensors file.

Each file is written to a temporary file in the same directory, flushed to disk and renamed
over the final name (``os.replace``), the new tensors first, then the JSON, and only then is
the previous generation's tensors file removed. Whatever moment a process dies at, ``name``
is therefore the previous complete checkpoint or the new complete one, never neither: the JSON
always names a tensors file that is complete. Loading checks the tensors file's size and
SHA-256 against the JSON (a same-size corruption is refused). Reading uses ``safetensors`` and
``json`` only, never pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from fishertune.atomic import atomic_write

__all__ = [
    "capture_rng_state",
    "checkpoint_name",
    "flatten_optimizer_state",
    "latest_checkpoint",
    "load_checkpoint",
    "prefixed",
    "restore_rng_state",
    "save_checkpoint",
    "tensors_file",
    "unflatten_optimizer_state",
    "weights_reference",
]

FORMAT = "fishertune-checkpoint"
VERSION = 1
TENSORS_SUFFIX = ".safetensors"
JSON_SUFFIX = ".json"
_DOCUMENT_KEYS: dict[str, type] = {
    "saved_at_ns": int,
    "tensors_file": str,
    "tensors_bytes": int,
    "tensors_sha256": str,
    "state": dict,
}
"""What every checkpoint JSON holds besides format and version, and of which type."""
_HEX_DIGITS = frozenset("0123456789abcdef")
"""The characters of a tensors file's generation (the save time in hexadecimal)."""


# ---------------------------------------------------------------------------- files
def _prepare_tensors(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``tensors`` detached, on CPU, contiguous, with storage sharing undone (safetensors
    refuses tensors that share memory)."""
    prepared: dict[str, Tensor] = {}
    storages: set[int] = set()
    for key, tensor in tensors.items():
        if not isinstance(tensor, Tensor):
            raise TypeError(f"checkpoint tensor {key!r} is a {type(tensor).__name__}, not a tensor")
        value = tensor.detach().to("cpu").contiguous()
        pointer = value.untyped_storage().data_ptr()
        if pointer in storages:
            value = value.clone()
        storages.add(pointer)
        prepared[key] = value
    return prepared


def _write_tensors(target: Path, tensors: dict[str, Tensor]) -> None:
    """Write prepared ``tensors`` atomically."""
    atomic_write(target, lambda path: save_file(tensors, str(path), metadata={"format": FORMAT}))


def _dumps(document: Mapping[str, Any], target: Path) -> str:
    """``document`` as JSON text; TypeError naming ``target`` if it is not serialisable."""
    try:
        return json.dumps(document, indent=1, sort_keys=True)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"checkpoint state for {target} is not JSON-serialisable: {error}"
        ) from None


def _write_json(target: Path, document: Mapping[str, Any]) -> None:
    """Write ``document`` as JSON atomically."""
    text = _dumps(document, target)
    atomic_write(target, lambda path: path.write_text(text, encoding="utf-8"))


def _sha256(path: Path) -> str:
    """Hex SHA-256 of the file at ``path``, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for piece in iter(lambda: file.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()


def _generations(folder: Path, name: str) -> list[Path]:
    """Every tensors file of checkpoint ``name`` in ``folder``, of any generation."""
    candidates = folder.glob(f"{name}*{TENSORS_SUFFIX}")
    return [path for path in candidates if checkpoint_name(path)[1] == name]


def save_checkpoint(
    directory: str | Path,
    name: str,
    *,
    tensors: Mapping[str, Tensor],
    state: Mapping[str, Any],
) -> Path:
    """Write checkpoint ``name`` into ``directory`` (created if needed); return the JSON path.

    ``tensors`` go to a new ``name.<generation>.safetensors`` and ``state`` (JSON-serialisable)
    to ``name.json``, each atomically, the JSON after the tensors; the previous generation's
    tensors are removed last. An existing checkpoint of that name stays loadable until the new
    one is complete.
    """
    if not name or "/" in name or os.sep in name:
        raise ValueError(f"checkpoint name must be a plain file name, got {name!r}")
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    json_path = folder / f"{name}{JSON_SUFFIX}"
    prepared = _prepare_tensors(tensors)
    _dumps(state, json_path)  # fail before touching files
    saved_at = time.time_ns()
    tensors_path = folder / f"{name}.{saved_at:x}{TENSORS_SUFFIX}"
    while tensors_path.exists():  # a clock that did not move since the last save
        saved_at += 1
        tensors_path = folder / f"{name}.{saved_at:x}{TENSORS_SUFFIX}"
    _write_tensors(tensors_path, prepared)
    document = {
        "format": FORMAT,
        "version": VERSION,
        "saved_at_ns": saved_at,
        "tensors_file": tensors_path.name,
        "tensors_bytes": tensors_path.stat().st_size,
        "tensors_sha256": _sha256(tensors_path),
        "state": dict(state),
    }
    _write_json(json_path, document)
    for stale in _generations(folder, name):
        if stale != tensors_path:
            stale.unlink(missing_ok=True)
    return json_path


def _read_document(path: Path) -> dict[str, Any]:
    """The checkpoint JSON at ``path``; errors name the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint file {path} does not exist") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"checkpoint file {path} is corrupt (invalid JSON: {error})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ValueError(f"checkpoint file {path} is not a {FORMAT} file")
    if document.get("version") != VERSION:
        raise ValueError(
            f"checkpoint file {path} has format version {document.get('version')!r}; "
            f"this code reads version {VERSION}"
        )
    for key, kind in _DOCUMENT_KEYS.items():
        if not isinstance(document.get(key), kind):
            raise ValueError(
                f"checkpoint file {path} is corrupt: key {key!r} missing or not a {kind.__name__}"
            )
    return document


def load_checkpoint(directory: str | Path, name: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read checkpoint ``name`` from ``directory``: ``(tensors on CPU, state)``.

    Raises ``FileNotFoundError`` or ``ValueError`` naming the missing or corrupt file (a
    tensors file whose size or SHA-256 differs from the JSON's record is corrupt).
    """
    folder = Path(directory)
    document = _read_document(folder / f"{name}{JSON_SUFFIX}")
    tensors_path = folder / str(document["tensors_file"])
    try:
        size = tensors_path.stat().st_size
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint file {tensors_path} does not exist") from None
    if size != document["tensors_bytes"]:
        raise ValueError(
            f"checkpoint file {tensors_path} is corrupt: {size} bytes, "
            f"{document['tensors_bytes']} expected"
        )
    if _sha256(tensors_path) != document["tensors_sha256"]:
        raise ValueError(
            f"checkpoint file {tensors_path} is corrupt: its SHA-256 differs from the one "
            f"recorded in {name}{JSON_SUFFIX}"
        )
    try:
        tensors = load_file(str(tensors_path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"checkpoint file {tensors_path} is corrupt: {error}") from None
    state: dict[str, Any] = document["state"]
    return tensors, state


def checkpoint_name(path: str | Path) -> tuple[Path, str]:
    """``(directory, name)`` of the checkpoint a file belongs to: its ``name.json`` or one of
    its ``name[.<generation>].safetensors`` files."""
    file = Path(path)
    if file.suffix == JSON_SUFFIX:
        return file.parent, file.name[: -len(JSON_SUFFIX)]
    if file.suffix == TENSORS_SUFFIX:
        stem = file.name[: -len(TENSORS_SUFFIX)]
        name, _, generation = stem.rpartition(".")
        if name and generation and all(c in _HEX_DIGITS for c in generation):
            return file.parent, name
        return file.parent, stem
    raise ValueError(f"{file} is not a checkpoint file (.json or .safetensors)")


def prefixed(tensors: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries of ``tensors`` whose key starts with ``prefix``, keyed without it (a
    checkpoint keeps several states side by side under their prefixes)."""
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def tensors_file(directory: str | Path, name: str) -> Path:
    """The tensors file that checkpoint ``name``'s JSON names (its current generation)."""
    folder = Path(directory)
    return folder / str(_read_document(folder / f"{name}{JSON_SUFFIX}")["tensors_file"])


def latest_checkpoint(directory: str | Path, names: Sequence[str] | None = None) -> str | None:
    """Name of the most recently saved complete checkpoint in ``directory`` (``None``: none).

    Complete means its JSON exists and is readable and names an existing tensors file;
    recency is the save time recorded in the JSON, ties broken by name. ``names`` limits the
    search to those checkpoints.
    """
    folder = Path(directory)
    if not folder.is_dir():
        return None
    best: tuple[int, str] | None = None
    paths = (
        folder.glob(f"*{JSON_SUFFIX}")
        if names is None
        else (folder / f"{name}{JSON_SUFFIX}" for name in names)
    )
    for path in paths:
        try:
            document = _read_document(path)
        except (OSError, ValueError):
            continue
        if not (folder / str(document["tensors_file"])).is_file():
            continue
        key = (int(document["saved_at_ns"]), path.name[: -len(JSON_SUFFIX)])
        if best is None or key > best:
            best = key
    return None if best is None else best[1]


def weights_reference(model: str, checkpoint: str | Path | None) -> dict[str, Any]:
    """Which base weights a run started from: model name, checkpoint path and its SHA-256.

    Tuner checkpoints store only what a method changed, so resuming or evaluating needs the
    same base weights; the hash (``None`` without a local file) lets a loader verify them.
    """
    digest = None
    if checkpoint is not None:
        sha = hashlib.sha256()
        with Path(checkpoint).open("rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                sha.update(block)
        digest = sha.hexdigest()
    return {
        "model": model,
        "checkpoint": None if checkpoint is None else str(checkpoint),
        "sha256": digest,
    }


# ---------------------------------------------------------------------------- RNG states
def capture_rng_state(
    generators: Mapping[str, torch.Generator] | None = None, prefix: str = "rng"
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The states of Python's ``random``, NumPy's global, torch's CPU and CUDA generators and
    the given ``generators``, as ``(tensors, JSON data)``.

    Torch states are byte tensors under ``{prefix}.*`` keys (listed in the JSON data); Python
    and NumPy states are plain JSON. :func:`restore_rng_state` reverses this.
    """
    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state(legacy=True)
    tensors = {f"{prefix}.torch": torch.get_rng_state()}
    cuda_keys = []
    if torch.cuda.is_available():
        for index, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            cuda_keys.append(f"{prefix}.cuda.{index}")
            tensors[cuda_keys[-1]] = cuda_state
    named = {}
    for name, generator in (generators or {}).items():
        key = f"{prefix}.generator.{name}"
        tensors[key] = generator.get_state()
        named[name] = key
    data = {
        "python": [version, list(internal), gauss],
        "numpy": [str(kind), [int(k) for k in keys], int(position), int(has_gauss), cached],
        "torch": f"{prefix}.torch",
        "cuda": cuda_keys,
        "generators": named,
    }
    return tensors, data


def restore_rng_state(
    tensors: Mapping[str, Tensor],
    data: Mapping[str, Any],
    generators: Mapping[str, torch.Generator] | None = None,
) -> None:
    """Restore what :func:`capture_rng_state` captured, including the given ``generators``.

    Every generator passed must have been captured under the same name. CUDA states are
    restored on the devices present; a warning says when their number differs.
    """
    version, internal, gauss = data["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = data["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(tensors[data["torch"]])
    cuda_keys: list[str] = data["cuda"]
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if len(cuda_keys) != available:
        warnings.warn(
            f"the checkpoint has CUDA RNG states of {len(cuda_keys)} device(s), this machine has "
            f"{available}; restoring the first {min(len(cuda_keys), available)}",
            stacklevel=2,
        )
    for index, key in enumerate(cuda_keys[:available]):
        torch.cuda.set_rng_state(tensors[key], index)
    saved: Mapping[str, str] = data["generators"]
    for name, generator in (generators or {}).items():
        if name not in saved:
            raise KeyError(
                f"no state saved for generator {name!r}; saved generators: {sorted(saved)}"
            )
        generator.set_state(tensors[saved[name]])


# ---------------------------------------------------------------------------- optimisers
def _encode(value: Any, key: str, tensors: dict[str, Tensor]) -> Any:
    """JSON form of an optimiser-state value; tensors go to ``tensors[key]``."""
    if isinstance(value, Tensor):
        tensors[key] = value
        return {"__tensor__": key}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"optimiser state {key!r} has non-string keys")
        return {"__dict__": {k: _encode(v, f"{key}.{k}", tensors) for k, v in value.items()}}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"optimiser state {key!r} holds a {type(value).__name__}, which is not saved")


def _decode(value: Any, tensors: Mapping[str, Tensor]) -> Any:
    """Inverse of :func:`_encode`."""
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__tuple__" in value:
            return tuple(_decode(v, tensors) for v in value["__tuple__"])
        return {k: _decode(v, tensors) for k, v in value["__dict__"].items()}
    return value


def flatten_optimizer_state(
    state_dict: Mapping[str, Any], prefix: str = "optimizer"
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split any ``Optimizer.state_dict()`` into ``(tensors, JSON data)``.

    Tensors (moments, steps, SparseAdamW's int32 ``indices``) keep their dtype and are keyed
    ``{prefix}.state.{param id}.{name}``; Python values (``max_step``, hyper-parameters, the
    parameter-group layout, tuples such as ``betas``) go to the JSON data exactly.
    """
    tensors: dict[str, Tensor] = {}
    state = {
        str(param_id): _encode(param_state, f"{prefix}.state.{param_id}", tensors)
        for param_id, param_state in state_dict["state"].items()
    }
    groups = _encode(list(state_dict["param_groups"]), f"{prefix}.param_groups", tensors)
    return tensors, {"state": state, "param_groups": groups}


def unflatten_optimizer_state(
    tensors: Mapping[str, Tensor], data: Mapping[str, Any]
) -> dict[str, Any]:
    """The ``state_dict`` that :func:`flatten_optimizer_state` split, for ``load_state_dict``."""
    return {
        "state": {int(pid): _decode(value, tensors) for pid, value in data["state"].items()},
        "param_groups": _decode(data["param_groups"], tensors),
    }
