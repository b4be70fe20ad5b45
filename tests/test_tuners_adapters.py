"""The adapter baselines: LoRA, AdaptFormer and deep VPT (method.md §9)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from fishertune.models import Segmentor, build_segmentor
from fishertune.tuners import build_tuner
from fishertune.tuners.adaptformer import ParallelAdapter  # importing registers the methods
from fishertune.tuners.lora import LowRankUpdate
from fishertune.tuners.vpt import DeepPrompt
from tuner_harness import (
    batch,
    check_save_load,
    check_trains_and_keeps_the_rest,
    tiny_segmentor,
    train_steps,
)

METHODS = ["lora", "adaptformer", "vpt"]
SAM = {"name": "samvit_base_patch16", "global_attn_indexes": (3,), "window_size": 4}


def _features(model: Segmentor, images: Tensor) -> list[Tensor]:
    model.eval()
    with torch.no_grad():
        features: list[Tensor] = model.backbone(images)
    return features


@pytest.mark.parametrize("name", METHODS)
def test_trains_and_keeps_the_rest(name: str) -> None:
    tuner = check_trains_and_keeps_the_rest(name)
    added = tuner.added_parameter_names()
    trainable_backbone = {
        n for n, p in tuner.segmentor.named_parameters() if p.requires_grad and "backbone." in n
    }
    assert added == trainable_backbone
    assert tuner.count().backbone == sum(
        p.numel() for n, p in tuner.segmentor.named_parameters() if n in added
    )
    groups = tuner.param_groups(lr=1e-4, weight_decay=0.05)
    in_adapter_groups = [p for g in groups if g["name"].startswith("adapter") for p in g["params"]]
    assert sum(p.numel() for p in in_adapter_groups) == tuner.count().backbone


@pytest.mark.parametrize("name", METHODS)
def test_trains_with_mask2former(name: str) -> None:
    check_trains_and_keeps_the_rest(name, head="mask2former")


@pytest.mark.parametrize("name", METHODS)
def test_save_and_load(name: str, tmp_path: Path) -> None:
    check_save_load(name, tmp_path)


@pytest.mark.parametrize(
    ("name", "expected"), [("lora", 786_432), ("adaptformer", 3_171_840), ("vpt", 3_686_400)]
)
def test_vit_large_trainable_count(name: str, expected: int) -> None:
    with torch.device("meta"):
        model = build_segmentor("vit_large_patch14_dinov2", img_size=518)
    assert build_tuner(name, model).count().backbone == expected


@pytest.mark.parametrize("name", ["lora", "adaptformer"])
def test_initial_output_unchanged(name: str) -> None:
    model = tiny_segmentor()
    images, _ = batch(seed=3)
    model.eval()
    before = model.predict(images)
    build_tuner(name, model)
    model.eval()
    assert torch.equal(model.predict(images), before)


# ---------------------------------------------------------------- LoRA


def _perturb_lora(model: Segmentor) -> None:
    """Random B factors, so the updates are non-zero without training."""
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LowRankUpdate):
                for b in module.lora_B.values():
                    b.copy_(torch.randn(b.shape, generator=generator))


def test_lora_merge_equals_unmerged_and_leaves_a_plain_segmentor() -> None:
    model = tiny_segmentor()
    tuner = build_tuner("lora", model)
    train_steps(tuner, steps=3)
    updates = [m for m in model.modules() if isinstance(m, LowRankUpdate)]
    assert all(bool(b.abs().sum() > 0) for u in updates for b in u.lora_B.values())
    images, _ = batch(seed=3)
    model.eval()
    unmerged = model.predict(images)
    tuner.merge()
    torch.testing.assert_close(model.predict(images), unmerged, rtol=1e-5, atol=1e-6)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    plain = tiny_segmentor()
    assert {n for n, _ in model.named_parameters()} == {n for n, _ in plain.named_parameters()}
    assert tuner.added_parameter_names() == set()
    assert tuner.count().backbone == 0


@pytest.mark.parametrize("layout", ["dinov2", "eva02_fused"])
def test_lora_updates_only_q_and_v_rows_of_fused_qkv(layout: str) -> None:
    extra = {"name": "eva02_tiny_patch14_224"} if layout == "eva02_fused" else {}
    model = tiny_segmentor(**extra)
    images, _ = batch(seed=3)
    before = _features(model, images)
    qkv = model.backbone.blocks[1].attn.qkv
    pretrained = qkv.weight.detach().clone()
    build_tuner("lora", model, rank=4, alpha=8.0)  # scaling 2
    assert torch.equal(_features(model, images)[0], before[0])
    _perturb_lora(model)
    update = qkv.parametrizations.weight[0]
    assert isinstance(update, LowRankUpdate)
    c = pretrained.shape[0] // 3
    expected = pretrained.clone()
    expected[:c] += 2.0 * update.lora_B["Q"] @ update.lora_A["Q"]
    expected[2 * c :] += 2.0 * update.lora_B["V"] @ update.lora_A["V"]
    effective = qkv.weight.detach()
    torch.testing.assert_close(effective, expected)
    assert torch.equal(effective[c : 2 * c], pretrained[c : 2 * c])  # K rows untouched
    assert torch.equal(qkv.parametrizations.weight.original, pretrained)
    assert set(update.lora_A) == {"Q", "V"}
    # the forward uses the update (EVA reads qkv.weight through F.linear, not the module)
    after = _features(model, images)
    assert not torch.allclose(after[0], before[0])


def test_lora_on_separate_q_and_v_projections() -> None:
    model = tiny_segmentor(name="eva02_large_patch14_448")
    images, _ = batch(seed=3)
    before = _features(model, images)
    attn = model.backbone.blocks[0].attn
    q_weight, k_weight = attn.q_proj.weight.detach().clone(), attn.k_proj.weight.detach().clone()
    tuner = build_tuner("lora", model)
    assert torch.equal(_features(model, images)[0], before[0])
    _perturb_lora(model)
    update = attn.q_proj.parametrizations.weight[0]
    expected = q_weight + update.lora_B["Q"] @ update.lora_A["Q"]  # alpha / rank = 1
    torch.testing.assert_close(attn.q_proj.weight.detach(), expected)
    assert parametrize.is_parametrized(attn.v_proj)
    assert not parametrize.is_parametrized(attn.k_proj)
    assert torch.equal(attn.k_proj.weight, k_weight)
    assert tuner.count().backbone == 4 * 2 * (8 * 32 + 32 * 8)
    perturbed = _features(model, images)
    assert not torch.allclose(perturbed[0], before[0])
    tuner.merge()
    torch.testing.assert_close(attn.q_proj.weight, expected)
    torch.testing.assert_close(_features(model, images)[0], perturbed[0], rtol=1e-5, atol=1e-6)


def test_lora_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match="lora targets must be a non-empty subset"):
        build_tuner("lora", tiny_segmentor(), targets=("Q", "O"))
    with pytest.raises(ValueError, match="rank must be at least 1"):
        build_tuner("lora", tiny_segmentor(), rank=0)


# ---------------------------------------------------------------- AdaptFormer


@pytest.mark.parametrize("scale", [0.1, 0.5])
def test_adaptformer_adds_scaled_bottleneck_next_to_the_ffn_branch(scale: float) -> None:
    model = tiny_segmentor()
    tuner = build_tuner("adaptformer", model, scale=scale)
    block = model.backbone.blocks[2]
    adapter = block.adaptformer
    assert isinstance(adapter, ParallelAdapter)
    with torch.no_grad():
        nn.init.normal_(adapter.up.weight)
        nn.init.normal_(adapter.up.bias)
        nn.init.uniform_(block.ls2.gamma, 0.5, 2.0)  # DINOv2's layer scale: FFN only
    model.eval()
    x = torch.randn(2, 7, 32)
    with torch.no_grad():
        mid = x + block.ls1(block.attn(block.norm1(x)))
        ffn_input = block.norm2(mid)
        bottleneck = adapter.up(torch.relu(adapter.down(ffn_input)))
        expected = mid + block.ls2(block.mlp.forward(ffn_input)) + scale * bottleneck
        torch.testing.assert_close(block(x), expected)
    assert tuner.added_parameter_names() >= {"backbone.model.blocks.2.adaptformer.up.weight"}
    with pytest.raises(NotImplementedError, match="cannot be merged"):
        tuner.merge()


@pytest.mark.parametrize("extra", [{"name": "eva02_large_patch14_448"}, SAM])
def test_adaptformer_on_other_ffns(extra: dict[str, Any]) -> None:
    model = tiny_segmentor(**extra)
    images, _ = batch(seed=3)
    model.eval()
    before = model.predict(images)
    build_tuner("adaptformer", model)
    model.eval()
    assert torch.equal(model.predict(images), before)


# ---------------------------------------------------------------- VPT


@pytest.mark.parametrize(
    "extra",
    [{}, {"name": "vit_small_patch14_reg4_dinov2"}, {"name": "eva02_large_patch14_448"}],
    ids=["dinov2", "dinov2_registers", "eva02"],
)
def test_vpt_keeps_feature_shapes_and_changes_features(extra: dict[str, Any]) -> None:
    model = tiny_segmentor(**extra)
    images, _ = batch(seed=3)
    before = _features(model, images)
    tuner = build_tuner("vpt", model, num_tokens=3)
    prefix = model.backbone.num_prefix_tokens
    seen: list[Tensor] = []
    block = model.backbone.blocks[1]
    # registered after the prompt's pre-hook, so it sees the sequence with prompts inserted
    block.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    after = _features(model, images)
    assert [f.shape for f in after] == [f.shape for f in before]
    assert all(not torch.allclose(a, b) for a, b in zip(after, before, strict=True))
    (x,) = seen
    assert x.shape[1] == prefix + 3 + (56 // 14) ** 2
    assert torch.equal(x[:, prefix : prefix + 3], block.vpt.tokens.expand(2, -1, -1))
    assert tuner.count().backbone == 4 * 3 * 32
    bound = (6 / (3 * 14**2 + 32)) ** 0.5  # VPT's initialisation
    assert all(bool(b.vpt.tokens.abs().max() <= bound) for b in model.backbone.blocks)
    assert all(isinstance(b.vpt, DeepPrompt) for b in model.backbone.blocks)


def test_vpt_treats_prompts_as_prefix_tokens_for_eva_rope() -> None:
    model = tiny_segmentor(name="eva02_tiny_patch14_224")
    build_tuner("vpt", model, num_tokens=5)
    # without this the rope of the patch grid would not match the tokens after the prefix
    assert all(block.attn.num_prefix_tokens == 1 + 5 for block in model.backbone.blocks)
    images, labels = batch()
    losses = model(images, labels)
    assert isinstance(losses, dict)
    total = sum(losses.values())
    assert isinstance(total, Tensor)
    total.backward()
    assert all(block.vpt.tokens.grad is not None for block in model.backbone.blocks)


def test_vpt_rejects_sam() -> None:
    with pytest.raises(ValueError, match=r"vpt cannot prompt the SAM family \(samvit_\*\)"):
        build_tuner("vpt", tiny_segmentor(**SAM))
