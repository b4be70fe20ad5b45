"""Rein (method.md §10) and VQT: formulas by hand, query link, frozen features, exact counts."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from fishertune.models import Segmentor, build_segmentor
from fishertune.models.heads.mask2former import Mask2FormerHead
from fishertune.tuners import build_tuner
from fishertune.tuners.rein import ReinAdapter  # importing the modules registers the tuners
from fishertune.tuners.vqt import VQTAdapter, stages
from tuner_harness import (
    TINY_M2F,
    batch,
    check_save_load,
    check_trains_and_keeps_the_rest,
    tiny_sam_segmentor,
    tiny_segmentor,
    train_steps,
)

M2F_TOKENS = TINY_M2F["num_queries"]
HEADS = ["linear", "mask2former"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny models: one intra-op thread avoids oversubscription on a busy 2-core machine
    (the file ran 4.6 s with one thread, 70+ s with two under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _options(name: str, head: str) -> dict[str, int]:
    """Rein links one query per token: match the tiny head's queries."""
    return {"num_tokens": M2F_TOKENS} if name == "rein" and head == "mask2former" else {}


def _rein(model: Segmentor) -> ReinAdapter:
    adapter = model.backbone.rein
    assert isinstance(adapter, ReinAdapter)
    return adapter


def _vqt(model: Segmentor) -> VQTAdapter:
    adapter = model.backbone.vqt
    assert isinstance(adapter, VQTAdapter)
    return adapter


def _backward(model: Segmentor, images: Tensor, labels: Tensor) -> None:
    losses = model(images, labels)
    assert isinstance(losses, dict)
    total = sum(losses.values())
    assert isinstance(total, Tensor)
    total.backward()


def _m2f(model: Segmentor) -> Mask2FormerHead:
    head = model.head
    assert isinstance(head, Mask2FormerHead)
    return head


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("name", ["rein", "vqt"])
def test_trains_and_keeps_the_rest(name: str, head: str) -> None:
    tuner = check_trains_and_keeps_the_rest(name, head, **_options(name, head))
    added = tuner.added_parameter_names()
    trainable = {n for n, p in tuner.segmentor.named_parameters() if p.requires_grad}
    assert added == {n for n in trainable if n.startswith("backbone.")}
    assert all(n.startswith(f"backbone.{name}.") for n in added)
    assert tuner.count().backbone == sum(
        p.numel() for n, p in tuner.segmentor.named_parameters() if n in added
    )


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("name", ["rein", "vqt"])
def test_save_and_load(name: str, head: str, tmp_path: Path) -> None:
    check_save_load(name, tmp_path, head, **_options(name, head))


# ---------------------------------------------------------------- Rein


def _rein_by_hand(adapter: ReinAdapter, f: Tensor, index: int) -> Tensor:
    """method.md §10 written out for patch tokens f (B, N, C) after block ``index``."""
    tokens = adapter.learnable_tokens_a[index] @ adapter.learnable_tokens_b[index]  # (m, C)
    dim = f.shape[-1]
    attn = torch.softmax(torch.einsum("bnc,mc->bnm", f, tokens) / math.sqrt(dim), dim=-1)
    values = tokens[1:] @ adapter.token2feat.weight.T + adapter.token2feat.bias
    delta = torch.einsum("bnm,mc->bnc", attn[..., 1:], values)
    delta = (delta + f) @ adapter.delta.weight.T + adapter.delta.bias
    return f + adapter.scale * delta


@pytest.mark.parametrize(
    ("name", "prefix"), [("vit_small_patch14_dinov2", 1), ("vit_small_patch14_reg4_dinov2", 5)]
)
def test_rein_block_output_follows_the_formulas(name: str, prefix: int) -> None:
    model = tiny_segmentor(name=name)
    build_tuner("rein", model)
    adapter = _rein(model)
    assert model.backbone.num_prefix_tokens == prefix
    with torch.no_grad():
        adapter.scale.fill_(0.5)  # make the refinement visible
    block = model.backbone.blocks[2]
    x = torch.randn(2, prefix + 16, 32)
    with torch.no_grad():
        raw = block.forward(x)  # the frozen block, without the hook
        hooked = block(x)
        expected = _rein_by_hand(adapter, raw[:, prefix:], 2)
    assert torch.equal(hooked[:, :prefix], raw[:, :prefix])  # class/register tokens untouched
    torch.testing.assert_close(hooked[:, prefix:], expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(hooked, raw)


def test_rein_refines_sam_maps_as_patch_tokens() -> None:
    model = tiny_sam_segmentor(window_size=4)
    build_tuner("rein", model)
    adapter = _rein(model)
    with torch.no_grad():
        adapter.scale.fill_(0.5)
    block = model.backbone.blocks[1]
    x = torch.randn(2, 4, 4, 32)
    with torch.no_grad():
        raw = block.forward(x)
        hooked = block(x)
        expected = _rein_by_hand(adapter, raw.reshape(2, 16, 32), 1).reshape(2, 4, 4, 32)
    torch.testing.assert_close(hooked, expected, rtol=1e-5, atol=1e-6)
    model.eval()
    assert model.predict(torch.randn(1, 3, 64, 64)).shape == (1, 5, 64, 64)


def test_rein_initialisation_follows_rein() -> None:
    model = tiny_segmentor()
    build_tuner("rein", model)
    adapter = _rein(model)
    bound = math.sqrt(6.0 / (3 * 14**2 + math.sqrt(32 * 16)))
    assert adapter.learnable_tokens_a.shape == (4, 100, 16)
    assert adapter.learnable_tokens_b.shape == (4, 16, 32)
    for tokens in (adapter.learnable_tokens_a, adapter.learnable_tokens_b):
        assert float(tokens.detach().abs().max()) <= bound
    assert float(adapter.scale.detach()) == pytest.approx(1e-3)
    assert adapter.link_transform is None  # linear head: no query link
    assert adapter.link_merge is None


def test_rein_query_link_by_hand_and_into_the_head() -> None:
    model = tiny_segmentor("mask2former")
    build_tuner("rein", model, num_tokens=M2F_TOKENS)
    adapter, head = _rein(model), _m2f(model)
    assert adapter.link_transform is not None
    assert adapter.link_merge is not None
    tokens = torch.stack(
        [a @ b for a, b in zip(adapter.learnable_tokens_a, adapter.learnable_tokens_b, strict=True)]
    )  # (L, m, C)
    projected = tokens @ adapter.link_transform.weight.T + adapter.link_transform.bias
    assert projected.shape == (4, M2F_TOKENS, 32)
    # max, mean and last over blocks; merge's input interleaves them per channel (Rein's layout)
    weight = adapter.link_merge.weight  # (q, 3q)
    expected = (
        projected.max(0).values @ weight[:, 0::3].T
        + projected.mean(0) @ weight[:, 1::3].T
        + projected[-1] @ weight[:, 2::3].T
        + adapter.link_merge.bias
    )
    linked = adapter.link()
    assert linked.shape == (M2F_TOKENS, head.hidden_dim)
    torch.testing.assert_close(linked, expected)
    # the head uses query_pos = link and queries = querys2feat(link)
    images, _ = batch(seed=3)
    model.eval()
    with torch.no_grad():
        features = model.neck(model.backbone(images), (56, 56))
        by_hand = head.predict(
            features, (56, 56), queries=head.querys2feat(linked), query_pos=linked
        )
        learned = head.predict(
            features,
            (56, 56),
            queries=head.transformer.queries_features.weight,
            query_pos=head.transformer.queries_embedder.weight,
        )
    assert torch.equal(model.predict(images), by_hand)
    assert not torch.allclose(by_hand, learned)


def test_rein_gradients_reach_the_tokens_through_the_query_link() -> None:
    model = tiny_segmentor("mask2former")
    tuner = build_tuner("rein", model, num_tokens=M2F_TOKENS)
    adapter, head = _rein(model), _m2f(model)
    with torch.no_grad():
        adapter.scale.zero_()  # the feature path then gives the tokens no gradient
    images, labels = batch()
    _backward(model, images, labels)
    for param in (adapter.learnable_tokens_a, adapter.learnable_tokens_b):
        assert param.grad is not None
        assert float(param.grad.abs().sum()) > 0
    assert adapter.link_merge is not None
    assert adapter.link_merge.weight.grad is not None
    assert adapter.token2feat.weight.grad is not None
    assert float(adapter.token2feat.weight.grad.abs().sum()) == 0.0  # only through scale
    # the learned query embeddings are replaced: frozen, no gradient, not trained or counted
    learned = (head.transformer.queries_embedder.weight, head.transformer.queries_features.weight)
    assert all(not p.requires_grad and p.grad is None for p in learned)
    grouped = {id(p) for g in tuner.param_groups(1e-4, 0.05) for p in g["params"]}
    assert not grouped & {id(p) for p in learned}
    assert head.querys2feat.weight.grad is not None


def test_rein_learned_queries_are_unused() -> None:
    model = tiny_segmentor("mask2former")
    build_tuner("rein", model, num_tokens=M2F_TOKENS)
    head = _m2f(model)
    images, _ = batch(seed=3)
    model.eval()
    before = model.predict(images)
    with torch.no_grad():
        head.transformer.queries_embedder.weight.normal_()
        head.transformer.queries_features.weight.normal_()
    assert torch.equal(model.predict(images), before)


def test_rein_link_needs_one_query_per_token() -> None:
    with pytest.raises(ValueError, match=r"num_tokens \(100\) must equal .* num_queries \(6\)"):
        build_tuner("rein", tiny_segmentor("mask2former"))
    tuner = build_tuner("rein", tiny_segmentor("mask2former"), link_queries=False)
    assert _rein(tuner.segmentor).link_transform is None
    assert all(p.requires_grad for p in tuner.segmentor.head.parameters())


def test_rein_copies_are_independent() -> None:
    model = tiny_segmentor("mask2former")
    build_tuner("rein", model, num_tokens=M2F_TOKENS)
    clone = copy.deepcopy(model)
    images, _ = batch(seed=3)
    model.eval()
    clone.eval()
    before = model.predict(images)
    assert torch.equal(clone.predict(images), before)
    with torch.no_grad():
        _rein(clone).scale.fill_(1.0)
        _rein(clone).learnable_tokens_b.mul_(10.0)
    assert torch.equal(model.predict(images), before)
    assert not torch.allclose(clone.predict(images), before)


# ---------------------------------------------------------------- VQT


def test_vqt_stages_split_the_blocks_at_the_outputs() -> None:
    assert stages((7, 11, 15, 23)) == [
        list(range(8)),
        list(range(8, 12)),
        list(range(12, 16)),
        list(range(16, 24)),
    ]
    assert stages((0, 1, 2, 3)) == [[0], [1], [2], [3]]


def test_vqt_queries_attend_with_the_frozen_block() -> None:
    """The recorded query outputs equal the block run on [tokens; queries] with a mask that lets
    the queries attend to the tokens only and hides the queries from everything."""
    model = tiny_segmentor()
    build_tuner("vqt", model)
    adapter = _vqt(model)
    block = model.backbone.blocks[1]
    tokens, count = 17, adapter.query_tokens.shape[1]
    x = torch.randn(2, tokens, 32)
    queries = adapter.query_tokens[1].detach().expand(2, -1, -1)
    mask = torch.zeros(tokens + count, tokens + count)
    mask[:, tokens:] = float("-inf")
    with torch.no_grad():
        plain = block.forward(x)
        joint = block.forward(torch.cat([x, queries], dim=1), attn_mask=mask)
        adapter.outputs.clear()
        assert torch.equal(block(x), plain)  # the block's own tokens are untouched
    torch.testing.assert_close(adapter.outputs[1], joint[:, tokens:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(joint[:, :tokens], plain, rtol=1e-5, atol=1e-5)


def test_vqt_keeps_block_features_and_changes_the_head_output() -> None:
    frozen = tiny_segmentor()
    model = tiny_segmentor()
    build_tuner("vqt", model)
    adapter = _vqt(model)
    images, _ = batch(seed=3)
    frozen.eval()
    model.eval()
    assert torch.equal(model.predict(images), frozen.predict(images))  # W starts at zero
    with torch.no_grad():
        adapter.proj.weight.normal_()
    indices = list(model.backbone.out_indices)
    with torch.no_grad():
        blocks = model.backbone.model.forward_intermediates(
            images, indices=indices, intermediates_only=True
        )
        reference = frozen.backbone.model.forward_intermediates(
            images, indices=indices, intermediates_only=True
        )
        maps = model.backbone(images)
    for ours, theirs in zip(blocks, reference, strict=True):
        assert torch.equal(ours, theirs)
    assert not any(torch.allclose(m, r) for m, r in zip(maps, reference, strict=True))
    assert not torch.allclose(model.predict(images), frozen.predict(images))
    assert not adapter.outputs  # freed after each forward


def test_vqt_read_out_by_hand() -> None:
    model = tiny_segmentor()
    build_tuner("vqt", model)
    adapter = _vqt(model)
    with torch.no_grad():
        adapter.proj.weight.normal_()
        adapter.proj.bias.normal_()
    features = [torch.randn(2, 32, 4, 4) for _ in range(4)]
    adapter.outputs.update({i: torch.randn(2, 100, 32) for i in range(4)})
    with torch.no_grad():
        maps = adapter.read_out(features)
    for level, (feature, out) in enumerate(zip(features, maps, strict=True)):
        f = feature.flatten(2).transpose(1, 2)
        z = adapter.outputs[level]
        attn = torch.softmax(
            F.layer_norm(f, (32,)) @ F.layer_norm(z, (32,)).transpose(1, 2) / math.sqrt(32), -1
        )
        expected = f + attn @ (z @ adapter.proj.weight.T + adapter.proj.bias)
        torch.testing.assert_close(out, expected.transpose(1, 2).reshape(2, 32, 4, 4))


def test_vqt_gradients_skip_the_backbone() -> None:
    model = tiny_segmentor()
    tuner = build_tuner("vqt", model)
    train_steps(tuner, steps=2)  # W leaves zero after the first step
    adapter = _vqt(model)
    adapter.zero_grad()
    images, labels = batch()
    _backward(model, images, labels)
    assert adapter.query_tokens.grad is not None
    assert float(adapter.query_tokens.grad.abs().sum()) > 0
    frozen = [p for n, p in model.backbone.named_parameters() if not n.startswith("vqt.")]
    assert all(p.grad is None for p in frozen)


@pytest.mark.parametrize(
    ("name", "extra"),
    [
        ("samvit_base_patch16", {"global_attn_indexes": (3,), "window_size": 4}),
        ("eva02_large_patch14_448", {}),
    ],
)
def test_vqt_rejects_unsupported_blocks(name: str, extra: dict[str, Any]) -> None:
    model = build_segmentor(
        name, num_classes=5, img_size=64, depth=4, embed_dim=32, num_heads=2, **extra
    )
    with pytest.raises(ValueError, match="vqt runs its query tokens through timm ViT blocks"):
        build_tuner("vqt", model)


# ---------------------------------------------------------------- sizes on ViT-L


def test_trainable_sizes_on_vit_large() -> None:
    with torch.device("meta"):
        seg = build_segmentor("vit_large_patch14_dinov2", img_size=518, head="mask2former")
        linear = build_segmentor("vit_large_patch14_dinov2", img_size=518)
    # 24·(100·16 + 16·1024) + 2·(1024² + 1024) + 1 + (1024·256 + 256) + (768·256 + 256)
    assert build_tuner("rein", copy.deepcopy(seg)).count().backbone == 2_990_081
    assert build_tuner("rein", linear).count().backbone == 2_530_817  # no query link
    vqt = build_tuner("vqt", seg).count().backbone
    assert vqt == 24 * 80 * 1024 + 1024 * 1024 + 1024 == 3_015_680
    assert abs(vqt - 3_010_000) <= 50_000
