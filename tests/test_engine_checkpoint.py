"""Checkpoints: atomic writes, exact round-trips of tensors, RNG and optimiser state."""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from fishertune.engine import checkpoint
from fishertune.engine.checkpoint import (
    capture_rng_state,
    checkpoint_name,
    flatten_optimizer_state,
    latest_checkpoint,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
    tensors_file,
    unflatten_optimizer_state,
    weights_reference,
)
from fishertune.optim import SparseAdamW
from fishertune.selection import Selection


def _tensors() -> dict[str, Tensor]:
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    return {
        "float": torch.randn(3, 5, dtype=torch.float64),
        "half": torch.randn(4, dtype=torch.bfloat16),
        "ints": torch.tensor([1, 5, 2**31 - 1], dtype=torch.int32),
        "scalar": torch.tensor(7.0),
        "view": base[:, 1:],
        "same_storage": base,
        "bools": torch.tensor([True, False]),
    }


def test_round_trip_is_bit_exact(tmp_path: Path) -> None:
    tensors = _tensors()
    state = {"step": 12, "stage": "tune", "schedule": {"p": [0.1, 0.25]}, "loss": 0.1 + 0.2}
    path = save_checkpoint(tmp_path / "run", "step_12", tensors=tensors, state=state)
    assert path == tmp_path / "run" / "step_12.json"
    loaded, loaded_state = load_checkpoint(tmp_path / "run", "step_12")
    assert loaded_state == state
    assert set(loaded) == set(tensors)
    for key, tensor in tensors.items():
        assert loaded[key].dtype == tensor.dtype
        assert torch.equal(loaded[key], tensor), key
    assert not list((tmp_path / "run").glob("*.tmp")), "temporary files must not remain"


def test_crash_between_tensors_and_json_leaves_an_incomplete_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_checkpoint(tmp_path, "step_1", tensors={"w": torch.ones(2)}, state={"step": 1})

    def crash(target: Path, document: object) -> None:
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(checkpoint, "_write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, "step_2", tensors={"w": torch.zeros(2)}, state={"step": 2})
    assert len(list(tmp_path.glob("step_2.*.safetensors"))) == 1
    assert not (tmp_path / "step_2.json").exists()
    (tmp_path / ".step_3.json.abc.tmp").write_text("{")  # a temporary file left by a kill -9
    assert latest_checkpoint(tmp_path) == "step_1"
    with pytest.raises(FileNotFoundError, match=r"step_2\.json"):
        load_checkpoint(tmp_path, "step_2")


def test_crash_during_the_rename_removes_the_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_replace(source: object, target: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, "a", tensors={"w": torch.ones(2)}, state={})
    assert list(tmp_path.iterdir()) == []
    assert latest_checkpoint(tmp_path) is None


def _file_operations(monkeypatch: pytest.MonkeyPatch, crash_at: int | None) -> list[str]:
    """Count every rename and removal; raise ``KeyboardInterrupt`` (a kill) at number
    ``crash_at`` before it happens. Returns the log of the operations done."""
    done: list[str] = []
    replace, unlink = os.replace, Path.unlink

    def step(what: str) -> None:
        if crash_at is not None and len(done) == crash_at:
            raise KeyboardInterrupt(f"killed before {what}")
        done.append(what)

    def counted_replace(source: Any, target: Any) -> None:
        step(f"replace {Path(target).name}")
        replace(source, target)

    def counted_unlink(path: Path, missing_ok: bool = False) -> None:
        if not path.name.endswith(".tmp"):  # a failed atomic write cleaning up after itself
            step(f"unlink {path.name}")
        unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(os, "replace", counted_replace)
    monkeypatch.setattr(Path, "unlink", counted_unlink)
    return done


def test_a_kill_at_any_file_operation_leaves_the_old_or_the_new_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Overwriting ``last``: killed before each rename or removal in turn, ``last`` loads as
    the previous checkpoint or the new one, complete either way, and the next save succeeds."""
    save_checkpoint(tmp_path / "probe", "last", tensors={"w": torch.ones(2)}, state={})
    with monkeypatch.context() as patch:
        operations = _file_operations(patch, None)
        save_checkpoint(tmp_path / "probe", "last", tensors={"w": torch.ones(2)}, state={})
    count = len(operations)
    assert [op.split()[0] for op in operations] == ["replace", "replace", "unlink"], operations
    for crash_at in range(count + 1):
        folder = tmp_path / f"kill{crash_at}"
        save_checkpoint(folder, "last", tensors={"w": torch.ones(2)}, state={"step": 1})
        with monkeypatch.context() as patch:
            _file_operations(patch, crash_at)
            try:
                save_checkpoint(folder, "last", tensors={"w": torch.zeros(3)}, state={"step": 2})
            except KeyboardInterrupt:
                assert crash_at < count
        tensors, state = load_checkpoint(folder, "last")
        assert latest_checkpoint(folder) == "last"
        expected = torch.ones(2) if state["step"] == 1 else torch.zeros(3)
        assert torch.equal(tensors["w"], expected), crash_at
        assert state["step"] == (1 if crash_at < 2 else 2), (crash_at, operations)
        save_checkpoint(folder, "last", tensors={"w": torch.full((4,), 3.0)}, state={"step": 3})
        assert load_checkpoint(folder, "last")[1] == {"step": 3}
        left = sorted(p.name for p in folder.iterdir())
        assert left == sorted(["last.json", tensors_file(folder, "last").name]), left


def test_latest_checkpoint_is_the_last_saved(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path / "absent") is None
    assert latest_checkpoint(tmp_path) is None
    for name in ("step_2", "step_10", "step_1"):
        save_checkpoint(tmp_path, name, tensors={}, state={"name": name})
    assert latest_checkpoint(tmp_path) == "step_1"
    assert latest_checkpoint(tmp_path, names=("step_2", "step_10", "absent")) == "step_10"
    tensors_file(tmp_path, "step_1").unlink()
    (tmp_path / "notes.json").write_text('{"other": 1}')
    assert latest_checkpoint(tmp_path) == "step_10"


def test_checkpoint_name_of_any_of_its_files(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, "best", tensors={"w": torch.ones(1)}, state={})
    assert checkpoint_name(tensors_file(tmp_path, "best")) == (tmp_path, "best")
    assert checkpoint_name(tmp_path / "best.json") == (tmp_path, "best")
    assert checkpoint_name(tmp_path / "my.model.safetensors") == (tmp_path, "my.model")
    with pytest.raises(ValueError, match="not a checkpoint file"):
        checkpoint_name(tmp_path / "best.yaml")


@pytest.mark.parametrize(
    ("damage", "error", "file"),
    [
        ("missing_json", FileNotFoundError, r"ckpt\.json"),
        ("missing_tensors", FileNotFoundError, r"ckpt\.[0-9a-f]+\.safetensors"),
        ("corrupt_json", ValueError, r"ckpt\.json"),
        ("foreign_json", ValueError, r"ckpt\.json"),
        ("json_missing_key", ValueError, r"ckpt\.json is corrupt: key 'tensors_bytes'"),
        ("json_missing_checksum", ValueError, r"ckpt\.json is corrupt: key 'tensors_sha256'"),
        ("truncated_tensors", ValueError, r"ckpt\.[0-9a-f]+\.safetensors"),
        ("garbled_tensors", ValueError, r"ckpt\.[0-9a-f]+\.safetensors"),
        ("same_size_change", ValueError, r"ckpt\.[0-9a-f]+\.safetensors is corrupt: its SHA"),
    ],
)
def test_missing_or_corrupt_files_are_named(
    tmp_path: Path, damage: str, error: type[Exception], file: str
) -> None:
    save_checkpoint(tmp_path, "ckpt", tensors={"w": torch.ones(8)}, state={"step": 3})
    tensors = tensors_file(tmp_path, "ckpt")
    json_file = tmp_path / "ckpt.json"
    if damage == "missing_json":
        json_file.unlink()
    elif damage == "missing_tensors":
        tensors.unlink()
    elif damage == "corrupt_json":
        json_file.write_text(json_file.read_text()[:20])
    elif damage == "foreign_json":
        json_file.write_text("[1, 2]")
    elif damage.startswith("json_missing"):  # a JSON edited by hand
        document = json.loads(json_file.read_text())
        del document["tensors_bytes" if damage == "json_missing_key" else "tensors_sha256"]
        json_file.write_text(json.dumps(document))
    elif damage == "truncated_tensors":
        tensors.write_bytes(tensors.read_bytes()[:-5])
    elif damage == "garbled_tensors":
        tensors.write_bytes(b"\xff" * tensors.stat().st_size)
    else:  # one float of the payload changed: same size, valid safetensors
        data = bytearray(tensors.read_bytes())
        data[-1] ^= 0x01
        tensors.write_bytes(bytes(data))
    with pytest.raises(error, match=file):
        load_checkpoint(tmp_path, "ckpt")


def test_invalid_inputs_are_rejected_before_touching_files(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, "a", tensors={"w": torch.ones(2)}, state={"step": 1})
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        save_checkpoint(tmp_path, "a", tensors={}, state={"bad": object()})
    with pytest.raises(TypeError, match="'w'"):
        save_checkpoint(tmp_path, "a", tensors={"w": [1.0]}, state={})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="plain file name"):
        save_checkpoint(tmp_path, "a/b", tensors={}, state={})
    assert latest_checkpoint(tmp_path) == "a"
    assert load_checkpoint(tmp_path, "a")[1] == {"step": 1}


def test_weights_reference_hashes_the_file(tmp_path: Path) -> None:
    weights = tmp_path / "backbone.safetensors"
    weights.write_bytes(b"weights" * 1000)
    reference = weights_reference("vit_small_patch14_dinov2", weights)
    assert reference == {
        "model": "vit_small_patch14_dinov2",
        "checkpoint": str(weights),
        "sha256": hashlib.sha256(b"weights" * 1000).hexdigest(),
    }
    assert weights_reference("m", None) == {"model": "m", "checkpoint": None, "sha256": None}


def _draws(generator: torch.Generator) -> tuple[Any, ...]:
    return (
        random.random(),
        random.gauss(0.0, 1.0),
        np.random.rand(3).tolist(),
        np.random.standard_normal(),
        torch.rand(4).tolist(),
        torch.randn(2, generator=generator).tolist(),
    )


def test_rng_states_restore_the_same_draws(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(3)
    random.gauss(0.0, 1.0)  # leave a cached Gaussian in Python's state
    np.random.standard_normal()
    tensors, data = capture_rng_state({"perturbation": generator})
    save_checkpoint(tmp_path, "rng", tensors=tensors, state={"rng": data})
    expected = _draws(generator)
    _draws(generator)
    loaded, state = load_checkpoint(tmp_path, "rng")
    restore_rng_state(loaded, state["rng"], {"perturbation": generator})
    assert _draws(generator) == expected
    with pytest.raises(KeyError, match="'other'"):
        restore_rng_state(loaded, state["rng"], {"other": torch.Generator()})


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.GELU(), nn.LayerNorm(8), nn.Linear(8, 3))


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: range) -> None:
    for step in steps:
        inputs = torch.randn(5, 6, generator=torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        model(inputs).square().mean().backward()
        optimizer.step()


def _adamw(model: nn.Module) -> torch.optim.Optimizer:
    params = list(model.parameters())
    return torch.optim.AdamW(
        [
            {"params": params[:2], "name": "decay", "weight_decay": 0.05},
            {"params": params[2:], "name": "no_decay", "weight_decay": 0.0, "lr": 3e-4},
        ],
        lr=1e-3,
        betas=(0.8, 0.99),
        foreach=False,
    )


def _linears(model: nn.Sequential) -> tuple[nn.Linear, nn.Linear]:
    first, last = model[0], model[3]
    assert isinstance(first, nn.Linear)
    assert isinstance(last, nn.Linear)
    return first, last


def _selection(weight: Tensor, share: float) -> Tensor:
    """Elements below ``share`` of a fixed uniform draw: nested as ``share`` grows."""
    return torch.rand(weight.shape, generator=torch.Generator().manual_seed(1)) < share


def _sparse(model: nn.Sequential) -> torch.optim.Optimizer:
    first, last = _linears(model)
    masks = {
        "first": _selection(first.weight, 0.3),
        "last": torch.zeros_like(last.weight, dtype=torch.bool),
    }
    groups: list[dict[str, Any]] = [
        {"params": [first.weight, last.weight], "name": "backbone"},
        {"params": [first.bias, last.bias], "lr": 2e-3},
        {"params": list(model[2].parameters()), "weight_decay": 0.0},
    ]
    named = {"first": first.weight, "last": last.weight}
    return SparseAdamW(groups, Selection.from_masks(masks), named, lr=1e-3, weight_decay=0.05)


def _grow(model: nn.Sequential, optimizer: torch.optim.Optimizer) -> None:
    assert isinstance(optimizer, SparseAdamW)
    first, _ = _linears(model)
    grown = {"first": _selection(first.weight, 0.6), "last": torch.eye(3, 8).bool()}
    optimizer.update_selection(Selection.from_masks(grown))


@pytest.mark.parametrize(("make", "grow"), [(_adamw, None), (_sparse, _grow)])
def test_optimizer_state_round_trip_continues_bit_identically(
    tmp_path: Path,
    make: Callable[[nn.Sequential], torch.optim.Optimizer],
    grow: Callable[[nn.Sequential, torch.optim.Optimizer], None] | None,
) -> None:
    model = _model()
    optimizer = make(model)
    _train(model, optimizer, range(3))
    if grow is not None:
        grow(model, optimizer)  # per-element steps now differ
    _train(model, optimizer, range(3, 5))
    opt_tensors, opt_data = flatten_optimizer_state(optimizer.state_dict())
    weights = {f"model.{k}": v for k, v in model.state_dict().items()}
    save_checkpoint(
        tmp_path, "opt", tensors={**weights, **opt_tensors}, state={"optimizer": opt_data}
    )

    tensors, state = load_checkpoint(tmp_path, "opt")
    resumed = _model()
    resumed.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if "model." in k})
    fresh = make(resumed)  # its initial state is replaced by the loaded one
    fresh.load_state_dict(unflatten_optimizer_state(tensors, state["optimizer"]))
    if isinstance(optimizer, SparseAdamW):
        for param in fresh.state:
            indices = fresh.state[param].get("indices")
            if indices is not None:
                assert indices.dtype == torch.int32
                assert isinstance(fresh.state[param]["max_step"], int)

    _train(model, optimizer, range(5, 9))
    _train(resumed, fresh, range(5, 9))
    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert fresh.state_dict()["param_groups"] == optimizer.state_dict()["param_groups"]


def test_flatten_rejects_unsaveable_values() -> None:
    with pytest.raises(TypeError, match=r"optimizer\.state\.0\.hook"):
        flatten_optimizer_state({"state": {0: {"hook": object()}}, "param_groups": []})
