"""Every registered method comes off a model again: ``Tuner.detach`` (issue 14, item 5).

A method is applied to a tiny segmentor, its added parameters are moved away from their
(often output-neutral) initial values so that it visibly changes the prediction, and
:meth:`~fishertune.tuners.Tuner.detach` must then give back the segmentor with the same
parameter names, values, ``requires_grad`` flags and outputs as before the method came.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from fishertune.models import Segmentor
from fishertune.tuners import available_tuners, build_tuner
from tuner_harness import batch, tiny_segmentor

EVA02 = {"name": "eva02_tiny_patch14_224"}
CASES: list[tuple[str, dict[str, Any], str, dict[str, Any]]] = [
    (method, {}, "linear", {}) for method in available_tuners()
] + [
    ("manual", {"blocks": "1", "kinds": "V"}, "linear", {}),  # part of one block
    ("rein", {"num_tokens": 6}, "mask2former", {}),  # the query link: a head layer and hook
    ("vpt", {}, "linear", EVA02),  # the rotary attentions' prefix count is widened
    ("lora", {}, "linear", EVA02),  # EVA02's fused qkv, read without calling the layer
]


def _snapshot(segmentor: Segmentor) -> tuple[dict[str, torch.Tensor], dict[str, bool]]:
    state = {k: v.detach().clone() for k, v in segmentor.state_dict().items()}
    flags = {n: p.requires_grad for n, p in segmentor.named_parameters()}
    return state, flags


@pytest.mark.parametrize(("method", "options", "head", "backbone"), CASES)
def test_detach_gives_the_model_back(
    method: str, options: dict[str, Any], head: str, backbone: dict[str, Any]
) -> None:
    segmentor = tiny_segmentor(head=head, **backbone)
    segmentor.eval()
    images, _ = batch()
    with torch.no_grad():
        expected = segmentor(images)
    state, flags = _snapshot(segmentor)

    tuner = build_tuner(method, segmentor, **options)
    added = tuner.added_parameter_names()
    params = dict(segmentor.named_parameters())
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name in added:
            params[name].add_(0.5 * torch.randn(params[name].shape, generator=generator))
        changed = segmentor(images)
    if added:
        assert not torch.allclose(changed, expected), f"{method} did not change the prediction"

    assert tuner.detach() is segmentor
    after, after_flags = _snapshot(segmentor)
    assert sorted(after) == sorted(state)
    for key, value in state.items():
        assert torch.equal(after[key], value), key
    assert after_flags == flags
    with torch.no_grad():
        assert torch.equal(segmentor(images), expected)
    with pytest.raises(RuntimeError, match="has not been applied"):
        _ = tuner.segmentor


def test_a_detached_model_takes_the_method_again() -> None:
    segmentor = tiny_segmentor()
    build_tuner("rein", segmentor).detach()
    tuner = build_tuner("rein", segmentor)
    assert tuner.added_parameter_names()


def test_applying_a_method_twice_names_the_clash() -> None:
    segmentor = tiny_segmentor()
    build_tuner("adaptformer", segmentor)
    with pytest.raises(ValueError, match="already has a `adaptformer` attribute"):
        build_tuner("adaptformer", segmentor)
