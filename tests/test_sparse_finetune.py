"""FisherTune on any model (issue 23 item 1): a timm ViT classifier, a plain MLP with a custom
loss and a Hugging Face ViT on dict batches; only selected candidate elements and the dense
head change, the selection grows nested on schedule, the deltas restore the tuned model bit
for bit, a warm-up trains the head alone, and a run resumed from its saved state continues
exactly as the uninterrupted one."""

from __future__ import annotations

import copy
from itertools import pairwise
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from conftest import tiny_hf_vit, tiny_vit_classifier
from fishertune.finetune import FinetuneConfig, SparseFinetune, load_deltas
from fishertune.selection import trainable_fraction


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
    with pytest.raises(ValueError, match="prefix_tokens must be >= 0"):
        FinetuneConfig(prefix_tokens=-1)
    tuner = SparseFinetune(tiny_vit_classifier())
    with pytest.raises(RuntimeError, match="call optimizer"):
        tuner.step()
    with pytest.raises(RuntimeError, match="call estimate"):
        tuner.save_state("never.safetensors")
    with pytest.raises(ValueError, match="batches is empty"):
        tuner.estimate([])


def _train(
    model: nn.Module, tuner: SparseFinetune, optimizer: torch.optim.Optimizer, steps: range
) -> None:
    data = _data()
    for step in steps:
        x, y = data[step % len(data)]
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
        tuner.step()


def test_a_warm_up_trains_the_head_alone_then_the_estimate_joins_the_schedule() -> None:
    model = tiny_vit_classifier()
    base = copy.deepcopy(model)
    config = FinetuneConfig(total_steps=8, refresh_every=2, dense_modules=("head",))
    tuner = SparseFinetune(model, config)
    optimizer = tuner.optimizer(lr=1e-2)
    _train(model, tuner, optimizer, range(4))  # warm-up: nothing selected yet
    tuned = dict(model.named_parameters())
    for name, before in base.named_parameters():
        assert torch.equal(before, tuned[name]) != name.startswith("head"), name
    tuner.estimate(_data())
    assert tuner.selection is not None
    halfway = trainable_fraction(4, 8, 0.01, 0.05, "grow")  # the schedule's share at step 4
    assert tuner.selection.count == round(halfway * tuner.total)
    assert optimizer.selection.count == tuner.selection.count
    _train(model, tuner, optimizer, range(4, 8))
    assert tuner.selection.count == round(0.05 * tuner.total)
    changed = [
        n for n in tuner.candidates if not torch.equal(tuned[n], dict(base.named_parameters())[n])
    ]
    assert changed


def test_a_run_resumed_from_its_saved_state_continues_exactly(tmp_path: Path) -> None:
    config = FinetuneConfig(total_steps=8, refresh_every=2, dense_modules=("head",))

    def start() -> tuple[nn.Module, SparseFinetune, torch.optim.Optimizer]:
        model = tiny_vit_classifier()
        tuner = SparseFinetune(model, config)
        tuner.estimate(_data())
        return model, tuner, tuner.optimizer(lr=1e-2)

    whole, whole_tuner, whole_optimizer = start()
    _train(whole, whole_tuner, whole_optimizer, range(8))

    first, first_tuner, first_optimizer = start()
    _train(first, first_tuner, first_optimizer, range(3))
    first_tuner.save_state(tmp_path / "state.safetensors")
    weights = copy.deepcopy(first.state_dict())
    moments = copy.deepcopy(first_optimizer.state_dict())

    resumed = tiny_vit_classifier()
    resumed.load_state_dict(weights)
    tuner = SparseFinetune(resumed, config)
    optimizer = tuner.optimizer(lr=1e-2)
    optimizer.load_state_dict(moments)
    tuner.load_state(tmp_path / "state.safetensors")
    assert tuner.steps_done == 3
    _train(resumed, tuner, optimizer, range(3, 8))
    for name, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    assert tuner.selection is not None
    assert whole_tuner.selection is not None
    assert tuner.selection.overlap(whole_tuner.selection) == whole_tuner.selection.count

    other = SparseFinetune(tiny_vit_classifier(), FinetuneConfig(total_steps=9))
    with pytest.raises(ValueError, match="saved with the schedule"):
        other.load_state(tmp_path / "state.safetensors")
    wider = SparseFinetune(tiny_vit_classifier(embed_dim=48), config)
    with pytest.raises(ValueError, match="candidate tensors differ"):
        wider.load_state(tmp_path / "state.safetensors")
    deltas = tuner.save(tmp_path / "deltas.safetensors")
    with pytest.raises(ValueError, match="not a fishertune tuner state file"):
        tuner.load_state(deltas)


def test_a_hugging_face_vit_on_dict_batches_with_its_own_loss() -> None:
    model = tiny_hf_vit()
    base = copy.deepcopy(model)
    config = FinetuneConfig(
        total_steps=4,
        refresh_every=2,
        target_modules=("q_proj", "k_proj", "v_proj", "fc1", "fc2"),
        dense_modules=("classifier",),
        shift_module="vit.embeddings",
        prefix_tokens=1,
    )
    tuner = SparseFinetune(model, config)
    batches = [{"pixel_values": x, "labels": y} for x, y in _data()]
    tuner.estimate(batches)
    optimizer = tuner.optimizer(lr=1e-2)
    for batch in batches:
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        tuner.step()
    final = tuner.selection
    assert final is not None
    assert final.count == round(0.05 * tuner.total)
    tuned = dict(model.named_parameters())
    for name, before in base.named_parameters():
        if name in final:
            assert torch.equal(before[~final.mask(name)], tuned[name][~final.mask(name)]), name
        elif not name.startswith("classifier"):
            assert torch.equal(before, tuned[name]), name
