"""Deltas on disk (issue 23 item 3): only the trained elements, back onto a fresh base model
bit for bit; a different base model, a foreign file or a damaged one refused in one line."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from conftest import tiny_vit_classifier
from fishertune.finetune import load_deltas, save_deltas
from fishertune.selection import Selection, random_selection


def _tuned(base: nn.Module, fraction: float) -> tuple[nn.Module, Selection]:
    """A copy of ``base`` whose randomly selected Q/K/V and MLP elements and whole head took
    new values."""
    tuned = copy.deepcopy(base)
    params = {n: p for n, p in tuned.named_parameters() if n.endswith(("qkv.weight", "fc1.weight"))}
    selection = random_selection(
        {n: p.shape for n, p in params.items()},
        fraction=fraction,
        generator=torch.Generator().manual_seed(1),
    )
    with torch.no_grad():
        for name, index in selection.items():
            flat = params[name].view(-1)
            flat[index.long()] += torch.randn(index.numel(), generator=torch.Generator())
        for p in tuned.head.parameters():
            p.add_(1.0)
    return tuned, selection


def test_deltas_round_trip_bit_exactly_and_scale_with_the_selection(tmp_path: Path) -> None:
    base = tiny_vit_classifier()
    tuned, selection = _tuned(base, 0.05)
    head = ("head.weight", "head.bias")
    path = save_deltas(tuned, selection, tmp_path / "deltas.safetensors", dense=head)
    fresh = tiny_vit_classifier()
    loaded = load_deltas(fresh, path)
    assert set(loaded) == set(selection)
    for name in selection:
        assert torch.equal(loaded[name].long(), selection[name].long())
    for (name, want), (_, got) in zip(
        tuned.state_dict().items(), fresh.state_dict().items(), strict=True
    ):
        assert torch.equal(want, got), name
    tuned_params = dict(tuned.named_parameters())
    changed = [n for n, p in base.named_parameters() if not torch.equal(p, tuned_params[n])]
    assert changed
    assert set(changed) <= {*selection, *head}
    bigger = save_deltas(tuned, _tuned(base, 0.5)[1], tmp_path / "big.safetensors", dense=head)
    # 5% of the candidates: well under the 50% file (indices and values per element)
    assert path.stat().st_size < 0.25 * bigger.stat().st_size
    with pytest.raises(ValueError, match="both in the selection and dense"):
        save_deltas(tuned, selection, tmp_path / "x.safetensors", dense=[next(iter(selection))])


def test_a_different_base_model_is_refused_in_one_line(tmp_path: Path) -> None:
    tuned, selection = _tuned(tiny_vit_classifier(), 0.05)
    path = save_deltas(tuned, selection, tmp_path / "d.safetensors")
    other = tiny_vit_classifier(embed_dim=48)
    with pytest.raises(ValueError, match=r"d\.safetensors: the model's parameter 'blocks\.0\."):
        load_deltas(other, path)
    deeper = tiny_vit_classifier(depth=3)
    with pytest.raises(ValueError, match="the deltas' base model had no such parameter"):
        load_deltas(deeper, path)


def test_a_foreign_or_damaged_file_is_refused(tmp_path: Path) -> None:
    tuned, selection = _tuned(tiny_vit_classifier(), 0.05)
    path = save_deltas(tuned, selection, tmp_path / "d.safetensors")
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # a byte of the last tensor's data
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="do not match their checksum"):
        load_deltas(tiny_vit_classifier(), damaged)
    foreign = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(ValueError, match="not a fishertune deltas file"):
        load_deltas(tiny_vit_classifier(), foreign)
    with pytest.raises(FileNotFoundError, match="no deltas file there"):
        load_deltas(tiny_vit_classifier(), tmp_path / "missing.safetensors")
    (tmp_path / "text.safetensors").write_text("not tensors")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_deltas(tiny_vit_classifier(), tmp_path / "text.safetensors")
