"""diagonal_fisher against brute-force per-sample loops (method.md §3)."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import Tensor, nn

from conftest import MODEL_FACTORIES, NUM_CLASSES
from fishertune.sensitivity import FeaturePerturbation, diagonal_fisher, sample_labels
from reference import looped_fisher, squared_batch_gradient


def _assert_close(got: dict[str, Tensor], want: dict[str, Tensor]) -> None:
    assert set(got) == set(want)
    for key in want:
        scale = want[key].abs().max().clamp_min(1e-30)
        torch.testing.assert_close(got[key] / scale, want[key] / scale, rtol=1e-4, atol=1e-5)


def _scored(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every second parameter, so unscored ones must be treated as constants."""
    return {n: p for i, (n, p) in enumerate(model.named_parameters()) if i % 2 == 0}


def _linear_params(model: nn.Module) -> dict[str, nn.Parameter]:
    """The weights and biases of every nn.Linear (a ViT's Q/K/V, projections and FFN)."""
    return {
        f"{name}.{attr}": getattr(module, attr)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        for attr in ("weight", "bias")
        if getattr(module, attr) is not None
    }


@pytest.mark.parametrize("kind", ["mlp", "vit"])
@pytest.mark.parametrize("labels", ["given", "sampled"])
def test_linear_hooks_match_the_per_sample_loop(kind: str, labels: str) -> None:
    """Σ_i (G_iᵀ X_i)² from the layers' inputs and output gradients equals the brute force."""
    model, batches = MODEL_FACTORIES[kind]()
    params = _linear_params(model)
    kwargs = {"params": params, "labels": labels}
    got = diagonal_fisher(
        model, batches, method="linear", generator=torch.Generator().manual_seed(5), **kwargs
    )
    want = diagonal_fisher(
        model, batches, method="loop", generator=torch.Generator().manual_seed(5), **kwargs
    )
    _assert_close(got, want)
    if labels == "given":
        _assert_close(got, looped_fisher(model, batches, params))
    # pieces of one sample give the same sums
    one = diagonal_fisher(model, batches, method="linear", max_chunk_elements=1, **kwargs)
    if labels == "given":
        _assert_close(one, got)


def test_linear_hooks_under_a_perturbation_and_their_preconditions() -> None:
    model, batches = MODEL_FACTORIES["vit"]()
    params = _linear_params(model)
    perturbation = FeaturePerturbation(model.backbone.blocks[0], generator=torch.Generator())
    results = []
    for method in ("linear", "vmap"):
        perturbation.generator.manual_seed(3)  # type: ignore[union-attr]
        results.append(
            diagonal_fisher(
                model,
                batches,
                params=params,
                labels="given",
                perturbation=perturbation,
                method=method,
            )
        )
    _assert_close(results[0], results[1])
    with pytest.raises(ValueError, match=r"nn\.Linear"):
        diagonal_fisher(model, batches, labels="given", method="linear")  # norms, embeddings


@pytest.mark.parametrize("kind", sorted(MODEL_FACTORIES))
@pytest.mark.parametrize("method", ["vmap", "loop"])
def test_given_labels_match_per_sample_loop(kind: str, method: str) -> None:
    model, batches = MODEL_FACTORIES[kind]()
    params = _scored(model)
    got = diagonal_fisher(model, batches, params=params, labels="given", method=method)
    _assert_close(got, looped_fisher(model, batches, params))


@pytest.mark.parametrize("kind", sorted(MODEL_FACTORIES))
def test_batch_mode_is_the_squared_batch_gradient(kind: str) -> None:
    model, batches = MODEL_FACTORIES[kind]()
    params = _scored(model)
    got = diagonal_fisher(model, batches, params=params, labels="batch")
    _assert_close(got, squared_batch_gradient(model, batches, params))
    per_sample = diagonal_fisher(model, batches, params=params, labels="given")
    assert not all(torch.allclose(got[k], per_sample[k]) for k in got)


@pytest.mark.parametrize("kind", ["conv", "vit"])
def test_sampled_labels_reproduce_with_a_fixed_generator(kind: str) -> None:
    model, batches = MODEL_FACTORIES[kind]()
    params = _scored(model)
    draws = 2
    got = diagonal_fisher(
        model,
        batches,
        params=params,
        num_label_samples=draws,
        generator=torch.Generator().manual_seed(7),
    )
    again = diagonal_fisher(
        model,
        batches,
        params=params,
        num_label_samples=draws,
        generator=torch.Generator().manual_seed(7),
    )
    for key in got:
        assert torch.equal(got[key], again[key])
    # The same draws, made by hand (per batch, one after the other), fed to the brute-force
    # loop as given labels; the several draws are averaged.
    replay = torch.Generator().manual_seed(7)
    model.eval()
    drawn: list[list[tuple[Tensor, Tensor]]] = [[] for _ in range(draws)]
    with torch.no_grad():
        for x, y in batches:
            logits = model(x)
            for k in range(draws):
                labels = sample_labels(logits, replay, targets=y, ignore_index=255)
                assert bool((labels[y == 255] == 255).all())
                drawn[k].append((x, labels))
    per_draw = [looped_fisher(model, d, params) for d in drawn]
    _assert_close(got, {k: sum(f[k] for f in per_draw) / draws for k in got})


def test_sampled_fisher_converges_to_the_expected_fisher() -> None:
    """Linear softmax model: E_y[(∂ℓ/∂W_kj)²] = x_j² p_k (1 − p_k) in closed form."""
    model = nn.Linear(4, 3, bias=False)
    x = torch.randn(6, 4)
    with torch.no_grad():
        p = torch.softmax(model(x), dim=1)
    expected = ((p * (1 - p)).unsqueeze(2) * x.square().unsqueeze(1)).mean(0)
    copies = x.repeat(2000, 1)  # 2000 label draws for every input
    got = diagonal_fisher(model, [(copies, None)], generator=torch.Generator().manual_seed(0))[
        "weight"
    ]
    torch.testing.assert_close(got, expected, rtol=0.08, atol=1e-3)


def test_only_requested_parameters_get_gradients() -> None:
    model, batches = MODEL_FACTORIES["vit"]()
    for p in model.parameters():
        p.requires_grad_(False)
    target = model.backbone.blocks[1].attn.qkv.weight
    got = diagonal_fisher(model, batches, params={"qkv": target}, labels="given")
    assert set(got) == {"qkv"}
    assert got["qkv"].shape == target.shape
    assert bool((got["qkv"] > 0).any())
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())
    assert model.training, "the model's mode is restored"


def test_chunk_size_does_not_change_the_result() -> None:
    model, batches = MODEL_FACTORIES["conv"]()
    one = diagonal_fisher(model, batches, labels="given", chunk_size=1)
    many = diagonal_fisher(model, batches, labels="given", chunk_size=64)
    _assert_close(one, many)


class _NotVmappable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, NUM_CLASSES)
        self.scale = nn.Parameter(torch.ones(NUM_CLASSES))  # not a linear layer's: no hooks

    def forward(self, x: Tensor) -> Tensor:
        if float(x.abs().sum()) > 1e9:  # data-dependent control flow: vmap cannot trace it
            return x
        return self.linear(x) * self.scale


def test_falls_back_to_the_loop_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    model = _NotVmappable()
    batches = [(torch.randn(4, 3), torch.randint(0, NUM_CLASSES, (4,)))]
    with caplog.at_level(logging.WARNING, logger="fishertune.sensitivity.per_sample"):
        got = diagonal_fisher(model, batches, labels="given")
    assert "falling back to a per-sample loop" in caplog.text
    _assert_close(got, looped_fisher(model, batches, dict(model.named_parameters())))
    with pytest.raises(RuntimeError):
        diagonal_fisher(model, batches, labels="given", method="vmap")


@pytest.mark.parametrize("method", ["vmap", "loop"])
def test_perturbed_fisher_matches_per_sample_gradients_of_the_batch(method: str) -> None:
    model, batches = MODEL_FACTORIES["vit"]()
    params = _scored(model)
    block = model.backbone.blocks[0]
    perturbation = FeaturePerturbation(block, scale=1.0, generator=torch.Generator())
    perturbation.generator.manual_seed(3)  # type: ignore[union-attr]
    got = diagonal_fisher(
        model, batches, params=params, labels="given", perturbation=perturbation, method=method
    )
    perturbation.generator.manual_seed(3)  # type: ignore[union-attr]
    with perturbation:
        want = looped_fisher(model, batches, params, batched_forward=True)
    _assert_close(got, want)
    clean = diagonal_fisher(model, batches, params=params, labels="given")
    assert not all(torch.allclose(got[k], clean[k]) for k in got)


def test_images_without_valid_pixels_contribute_zero() -> None:
    model, batches = MODEL_FACTORIES["conv"]()
    x, y = batches[0]
    zero = diagonal_fisher(model, [(x, torch.full_like(y, 255))], labels="given")
    assert all(float(v.abs().max()) == 0.0 for v in zero.values())
    # They still count as samples: adding one halves nothing but scales by N / (N + 1).
    base = diagonal_fisher(model, [(x, y)], labels="given")
    extra = diagonal_fisher(model, [(x, y), (x[:1], torch.full_like(y[:1], 255))], labels="given")
    n = x.shape[0]
    _assert_close(extra, {k: v * n / (n + 1) for k, v in base.items()})


def test_bad_arguments_raise_clear_errors() -> None:
    model, batches = MODEL_FACTORIES["mlp"]()
    with pytest.raises(ValueError, match="labels must be one of"):
        diagonal_fisher(model, batches, labels="true")
    with pytest.raises(ValueError, match="is not a parameter of the given model"):
        diagonal_fisher(model, batches, params={"w": nn.Parameter(torch.zeros(2))})
    with pytest.raises(ValueError, match="targets are required"):
        diagonal_fisher(model, [(batches[0][0], None)], labels="given")
    with pytest.raises(TypeError, match="pair"):
        diagonal_fisher(model, [batches[0][0]], labels="given")
    with pytest.raises(ValueError, match="no samples"):
        diagonal_fisher(model, [], labels="given")
    with pytest.raises(ValueError, match="method must be one of"):
        diagonal_fisher(model, batches, method="fast")
