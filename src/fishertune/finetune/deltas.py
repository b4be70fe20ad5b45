"""Only the trained elements of a model on disk, and back onto a fresh copy of its base model.

A deltas file is one safetensors file. Per selected tensor ``NAME`` it holds ``NAME:index``
(the sorted flat indices of a :class:`~fishertune.selection.Selection`, int32 below 2³¹
elements) and ``NAME:values`` (the tuned values there, in the parameter's own dtype), and per
densely trained tensor (a new head) ``NAME:whole``, so its size is proportional to what was
trained, not to the model. Its metadata hold the format, the
manifest of the base model (the shape of every parameter it had, selected or not) and a
SHA-256 over the tensors' bytes. :func:`load_deltas` writes the values into a model's
parameters in place, so the result equals the tuned model bit for bit; it refuses, in one
line naming the file and the tensor, a base model whose parameters differ from the manifest,
a file that is not a deltas file and one whose bytes do not match its checksum. Files are
written atomically and never unpickled.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path

import torch
from torch import Tensor, nn

from fishertune.finetune.checked_file import load_checked, save_checked
from fishertune.selection import Selection

__all__ = ["DELTAS_FORMAT", "load_deltas", "save_deltas"]

DELTAS_FORMAT = "fishertune-deltas/1"
"""The ``format`` metadata entry of a deltas file."""

_INDEX, _VALUES, _WHOLE = ":index", ":values", ":whole"


def _manifest(model: nn.Module) -> dict[str, list[int]]:
    return {name: list(p.shape) for name, p in model.named_parameters()}


def save_deltas(
    model: nn.Module, selection: Selection, path: str | Path, *, dense: Collection[str] = ()
) -> Path:
    """Write ``model``'s values at ``selection`` and its ``dense`` parameters whole (tensors
    named as in ``model.named_parameters()``) to ``path``, with the model's manifest; returns
    the path."""
    params = dict(model.named_parameters())
    tensors: dict[str, Tensor] = {}
    for name in dense:
        if name not in params:
            raise ValueError(f"deltas: dense names {name!r}, which the model does not have")
        if name in selection:
            raise ValueError(f"deltas: {name!r} is both in the selection and dense")
        tensors[name + _WHOLE] = params[name].detach().cpu().contiguous()
    for name, index in selection.items():
        if name not in params:
            raise ValueError(f"deltas: the selection names {name!r}, which the model does not have")
        param = params[name]
        if torch.Size(param.shape) != selection.shape(name):
            raise ValueError(
                f"deltas: {name!r} has shape {list(param.shape)} in the model but "
                f"{list(selection.shape(name))} in the selection"
            )
        flat_index = index.detach().cpu().contiguous()
        tensors[name + _INDEX] = flat_index
        tensors[name + _VALUES] = param.detach().reshape(-1)[index].cpu().contiguous()
    return save_checked(path, tensors, DELTAS_FORMAT, {"manifest": json.dumps(_manifest(model))})


def load_deltas(model: nn.Module, path: str | Path) -> Selection:
    """Write the deltas file at ``path`` into ``model``'s parameters (in place, without
    gradients) and return the selection it holds (its dense tensors are written whole).
    ``model`` must be the base model the file was saved from: every parameter of its
    manifest, with the same shape, and no other."""
    file = Path(path)
    tensors, metadata = load_checked(file, DELTAS_FORMAT, "deltas")
    manifest = {name: torch.Size(shape) for name, shape in json.loads(metadata["manifest"]).items()}
    params = dict(model.named_parameters())
    for name in sorted(set(manifest) | set(params)):
        have = torch.Size(params[name].shape) if name in params else None
        want = manifest.get(name)
        if have != want:
            what = "has no such parameter" if have is None else f"has shape {list(have)}"
            expected = "no such parameter" if want is None else f"shape {list(want)}"
            raise ValueError(
                f"{file}: the model's parameter {name!r} {what}; the deltas' base model had "
                f"{expected}"
            )
    indices = {
        key.removesuffix(_INDEX): tensor for key, tensor in tensors.items() if key.endswith(_INDEX)
    }
    whole = {
        key.removesuffix(_WHOLE): tensor for key, tensor in tensors.items() if key.endswith(_WHOLE)
    }
    unknown = sorted((set(indices) | set(whole)) - set(manifest))
    if unknown:
        raise ValueError(f"{file}: deltas for {unknown[0]!r}, which its manifest does not list")
    selection = Selection(indices, {name: manifest[name] for name in indices})
    with torch.no_grad():
        for name, index in selection.items():
            values = tensors[name + _VALUES]
            param = params[name]
            if values.shape != index.shape or values.dtype != param.dtype:
                raise ValueError(
                    f"{file}: {name}{_VALUES} must be {index.numel()} values of {param.dtype}"
                )
            flat = param.data.view(-1)
            flat[index.to(flat.device, torch.int64)] = values.to(flat.device)
        for name, values in whole.items():
            param = params[name]
            if values.shape != param.shape or values.dtype != param.dtype:
                raise ValueError(f"{file}: {name}{_WHOLE} must be a {param.dtype} tensor")
            param.data.copy_(values)
    return selection.to(next(iter(params.values())).device) if params else selection
