"""FisherTune on any model (issue 23 item 1, tensor-pair batches): a timm ViT classifier and a
plain MLP with a custom loss; only selected candidate elements and the dense head change, the
selection grows nested on schedule, and the deltas restore the tuned model bit for bit."""

from __future__ import annotations

import copy
from itertools import pairwise
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from conftest import tiny_vit_classifier
from fishertune.finetune import FinetuneConfig, SparseFinetune, load_deltas


def _data() -> list[tuple[Tensor, Tensor]]:
    generator = torch.Generator().manual_seed(2)
    return [
        (
            torch.randn(4, 3, 32, 32, generator=generator),
            torch.randint(0, 5, (4,), generator=generator),
        )
        for _ in range(4)
    ]


@pytest.mark.parametrize("estimator", ["diagonal", "variational"])
def test_a_timm_vit_trains_only_its_selection_and_head_and_grows_nested(
    tmp_path: Path, estimator: str
) -> None:
    model = tiny_vit_classifier()
    base = copy.deepcopy(model)
    config = FinetuneConfig(
        total_steps=6,
        refresh_every=2,
        dense_modules=("head",),
        estimator=estimator,
        variational_steps=4,
    )
    tuner = SparseFinetune(model, config)
    assert set(tuner.candidates) == {
        f"blocks.{i}.{name}.weight" for i in range(2) for name in ("attn.qkv", "mlp.fc1", "mlp.fc2")
    }
    data = _data()
    scores = tuner.estimate(data)
    assert set(scores) == set(tuner.candidates)
    first = tuner.selection
    assert first is not None
    assert first.count == round(0.01 * tuner.total)
    optimizer = tuner.optimizer(lr=1e-2)
    selections = [first]
    for step in range(6):
        x, y = data[step % len(data)]
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
        tuner.step()
        assert tuner.selection is not None
        selections.append(tuner.selection)
    for smaller, larger in pairwise(selections):
        assert smaller.overlap(larger) == smaller.count  # nested
    final = tuner.selection
    assert final is not None
    assert final.count == round(0.05 * tuner.total)
    tuned = dict(model.named_parameters())
    for name, before in base.named_parameters():
        after = tuned[name]
        if name.startswith("head"):
            assert not torch.equal(before, after), name
        elif name in final:
            unselected = ~final.mask(name)
            assert torch.equal(before[unselected], after[unselected]), name
        else:
            assert torch.equal(before, after), name
    fresh = tiny_vit_classifier()
    load_deltas(fresh, tuner.save(tmp_path / "deltas.safetensors"))
    for name, value in fresh.state_dict().items():
        assert torch.equal(value, model.state_dict()[name]), name


def test_any_module_with_a_custom_loss_and_f_alone() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))
    data = [(torch.randn(8, 6), torch.randn(8, 1)) for _ in range(3)]

    def squared_error(outputs: Tensor, targets: Tensor) -> Tensor:
        return (outputs - targets).square().sum(dim=1)  # per-sample losses

    config = FinetuneConfig(target_modules=("0", "2"), shift_module=None, variant="F")
    tuner = SparseFinetune(model, config)
    tuner.estimate(data, loss_fn=squared_error)
    assert tuner.selection is not None
    assert tuner.selection.count == round(0.01 * tuner.total)


def test_bad_options_and_orders_are_refused_in_one_line() -> None:
    with pytest.raises(ValueError, match=r"min_fraction 0\.1 exceeds fraction 0\.05"):
        FinetuneConfig(min_fraction=0.1)
    with pytest.raises(ValueError, match="estimator must be one of"):
        FinetuneConfig(estimator="exact")
    with pytest.raises(ValueError, match="needs a shift_module"):
        FinetuneConfig(shift_module=None)
    with pytest.raises(ValueError, match="target_modules \\['nothing'\\]: no module"):
        SparseFinetune(tiny_vit_classifier(), FinetuneConfig(target_modules=("nothing",)))
    with pytest.raises(ValueError, match="shift_module 'stem': the model has no such module"):
        SparseFinetune(tiny_vit_classifier(), FinetuneConfig(shift_module="stem"))
    tuner = SparseFinetune(tiny_vit_classifier())
    with pytest.raises(RuntimeError, match="call estimate"):
        tuner.optimizer(lr=1e-3)
    with pytest.raises(RuntimeError, match="call optimizer"):
        tuner.step()
