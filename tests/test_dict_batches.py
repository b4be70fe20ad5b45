"""The estimators on dict batches and Hugging Face models: keyword inputs, the model's own
``ModelOutput.loss``, token-id inputs, sampled labels from ``logits``; each against a
brute-force loop of ``loss.backward()`` on the real module, one sample at a time."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from conftest import NUM_CLASSES, tiny_hf_bert, tiny_hf_vit
from fishertune.sensitivity import (
    FeaturePerturbation,
    ModelOutputError,
    diagonal_fisher,
    fit_variational,
)


def _close(got: Mapping[str, Tensor], want: Mapping[str, Tensor]) -> None:
    assert set(got) == set(want)
    for key in want:
        scale = want[key].abs().max().clamp_min(1e-30)
        torch.testing.assert_close(got[key] / scale, want[key] / scale, rtol=1e-4, atol=1e-5)


def _linear_weights(model: nn.Module, suffixes: tuple[str, ...]) -> dict[str, nn.Parameter]:
    return {
        f"{name}.weight": module.weight
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.endswith(suffixes)
    }


def _brute_force(
    model: nn.Module,
    batches: list[dict[str, Tensor]],
    params: Mapping[str, nn.Parameter],
    loss: Callable[[nn.Module, dict[str, Tensor]], Tensor],
) -> dict[str, Tensor]:
    """(1/N) Σ_i (∂ℓ_i/∂θ)², each sample's loss from its own call of the real module."""
    model.eval()
    sums = {k: torch.zeros_like(p) for k, p in params.items()}
    count = 0
    for batch in batches:
        size = batch["labels"].shape[0]
        for i in range(size):
            one = {k: v[i : i + 1] for k, v in batch.items()}
            grads = torch.autograd.grad(loss(model, one), list(params.values()))
            for k, g in zip(params, grads, strict=True):
                sums[k] += g.square()
            count += 1
    return {k: s / count for k, s in sums.items()}


def _model_loss(model: nn.Module, one: dict[str, Tensor]) -> Tensor:
    return model(**one).loss


def _vit_batches() -> list[dict[str, Tensor]]:
    torch.manual_seed(1)
    x = torch.randn(5, 3, 32, 32)
    y = torch.randint(0, NUM_CLASSES, (5,))
    return [{"pixel_values": x[:3], "labels": y[:3]}, {"pixel_values": x[3:], "labels": y[3:]}]


def _bert_batches() -> list[dict[str, Tensor]]:
    torch.manual_seed(2)
    ids = torch.randint(0, 40, (5, 8))
    mask = torch.ones(5, 8, dtype=torch.long)
    mask[0, 5:] = 0
    mask[3, 2:] = 0
    y = torch.randint(0, NUM_CLASSES, (5,))
    return [
        {"input_ids": ids[:2], "attention_mask": mask[:2], "labels": y[:2]},
        {"input_ids": ids[2:], "attention_mask": mask[2:], "labels": y[2:]},
    ]


def _per_sample_ce(outputs: object, targets: Tensor) -> Tensor:
    return F.cross_entropy(outputs.logits, targets, reduction="none")  # type: ignore[attr-defined]


@pytest.mark.parametrize("method", ["auto", "loop"])
def test_the_model_own_loss_of_a_hugging_face_batch_matches_the_brute_force(method: str) -> None:
    """A dict batch with ``labels`` and no loss_fn: every sample's ``ModelOutput.loss``."""
    model, batches = tiny_hf_vit(), _vit_batches()
    params = _linear_weights(model, ("q_proj", "v_proj", "fc1"))
    got = diagonal_fisher(model, batches, params=params, labels="given", method=method)
    _close(got, _brute_force(model, batches, params, _model_loss))


def test_a_loss_fn_on_dict_batches_takes_the_linear_path_and_agrees() -> None:
    """With a loss_fn the labels leave the batch as targets; the hooks' way equals the loop."""
    model, batches = tiny_hf_vit(), _vit_batches()
    params = _linear_weights(model, ("q_proj", "fc2"))
    fast = diagonal_fisher(
        model, batches, params=params, labels="given", loss_fn=_per_sample_ce, method="linear"
    )
    _close(fast, _brute_force(model, batches, params, _model_loss))


def test_token_id_inputs_with_an_attention_mask() -> None:
    """Integer inputs (no input gradient) and a per-sample mask split with the ids."""
    model, batches = tiny_hf_bert(), _bert_batches()
    params = _linear_weights(model, ("query", "value", "dense"))
    want = _brute_force(model, batches, params, _model_loss)
    _close(diagonal_fisher(model, batches, params=params, labels="given"), want)
    linear = diagonal_fisher(
        model, batches, params=params, labels="given", loss_fn=_per_sample_ce, method="linear"
    )
    _close(linear, want)


def test_sampled_labels_are_drawn_from_the_logits_with_the_built_in_and_a_custom_loss() -> None:
    model, batches = tiny_hf_vit(), _vit_batches()
    params = _linear_weights(model, ("k_proj", "fc1"))
    runs = {
        (method, custom): diagonal_fisher(
            model,
            batches,
            params=params,
            labels="sampled",
            method=method,
            loss_fn=_per_sample_ce if custom else None,
            generator=torch.Generator().manual_seed(3),
        )
        for method in ("linear", "loop")
        for custom in (False, True)
    }
    first = runs[("linear", False)]
    for got in runs.values():
        _close(got, first)
    other = diagonal_fisher(
        model, batches, params=params, labels="sampled", generator=torch.Generator().manual_seed(4)
    )
    assert not torch.allclose(
        other["vit.layers.0.mlp.fc1.weight"], first["vit.layers.0.mlp.fc1.weight"]
    )


def test_a_shift_at_the_embeddings_agrees_across_the_three_ways() -> None:
    model, batches = tiny_hf_vit(), _vit_batches()
    params = _linear_weights(model, ("q_proj", "fc2"))

    def scores(method: str, loss_fn: Callable[..., Tensor] | None) -> dict[str, Tensor]:
        shift = FeaturePerturbation(
            model.vit.embeddings, generator=torch.Generator().manual_seed(0), num_prefix_tokens=1
        )
        return diagonal_fisher(
            model,
            batches,
            params=params,
            labels="given",
            perturbation=shift,
            method=method,
            loss_fn=loss_fn,
        )

    linear = scores("linear", _per_sample_ce)
    _close(scores("vmap", None), linear)
    _close(scores("loop", None), linear)
    _close(scores("loop", _per_sample_ce), linear)
    clean = diagonal_fisher(model, batches, params=params, labels="given")
    assert not torch.allclose(
        linear["vit.layers.0.attention.q_proj.weight"],
        clean["vit.layers.0.attention.q_proj.weight"],
    )


def test_the_stable_estimator_on_dict_batches_with_the_model_loss() -> None:
    model, batches = tiny_hf_vit(), _vit_batches()
    params = _linear_weights(model, ("v_proj", "fc1"))

    def fit(loss_fn: Callable[..., Tensor] | None, curvature: str) -> Tensor:
        return fit_variational(
            model,
            batches,
            params=params,
            labels="given",
            steps=3,
            loss_fn=loss_fn,
            curvature=curvature,
            generator=torch.Generator().manual_seed(5),
        ).precision["vit.layers.0.mlp.fc1.weight"]

    for curvature in ("fisher", "hessian"):
        torch.testing.assert_close(
            fit(None, curvature), fit(_per_sample_ce, curvature), rtol=1e-4, atol=1e-3
        )


def test_bad_dict_batches_get_one_clear_error() -> None:
    model, batches = tiny_hf_vit(), _vit_batches()
    params = _linear_weights(model, ("fc1",))
    unlabelled = [{"pixel_values": batches[0]["pixel_values"]}]
    with pytest.raises(ValueError, match="needs its 'labels' key"):
        diagonal_fisher(model, unlabelled, params=params, labels="given")
    with pytest.raises(ValueError, match="has no 'labels' key"):
        diagonal_fisher(model, unlabelled, params=params, labels="given", loss_fn=_per_sample_ce)
    with pytest.raises(TypeError, match="tensor or a dict"):
        diagonal_fisher(model, [(["not", "a tensor"], None)], params=params, labels="sampled")
    with pytest.raises(ValueError, match="no tensor with a batch dimension"):
        diagonal_fisher(model, [{"labels": torch.tensor(1)}], params=params, labels="sampled")

    class Logits(nn.Module):  # takes labels but returns plain logits: no loss of its own
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, NUM_CLASSES)

        def forward(self, features: Tensor, labels: Tensor | None = None) -> Tensor:
            return self.fc(features)

    plain = Logits()
    x, y = torch.randn(3, 4), torch.randint(0, NUM_CLASSES, (3,))
    with pytest.raises(ModelOutputError, match="has no 'loss'"):
        diagonal_fisher(plain, [{"features": x, "labels": y}], labels="given")
    with pytest.raises(ModelOutputError, match="neither a tensor of class logits"):
        diagonal_fisher(model.vit, [{"pixel_values": batches[0]["pixel_values"]}], labels="sampled")
    with pytest.raises(ValueError, match="mark the ignored positions"):
        diagonal_fisher(plain, [(x, y[:, None].expand(3, 2))], labels="sampled")
    # the same dict batch, scored with a loss_fn on plain logits, works
    scores = diagonal_fisher(
        plain,
        [{"features": x, "labels": y}],
        labels="given",
        loss_fn=lambda out, t: F.cross_entropy(out, t, reduction="none"),
    )
    assert scores["fc.weight"].abs().sum() > 0
