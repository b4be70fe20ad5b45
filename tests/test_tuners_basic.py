"""The tuner interface, registry, full fine-tuning and the frozen backbone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from fishertune.tuners import available_tuners, build_tuner
from fishertune.tuners.base import Tuner, decays
from tuner_harness import (
    check_save_load,
    check_trains_and_keeps_the_rest,
    tiny_sam_segmentor,
    tiny_segmentor,
)


def test_registry_lists_and_rejects() -> None:
    assert {"full", "freeze"} <= set(available_tuners())
    with pytest.raises(ValueError, match="unknown tuner 'bitfit'; available:"):
        build_tuner("bitfit", tiny_segmentor())
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['rank'\] for tuner 'full'"):
        build_tuner("full", tiny_segmentor(), rank=4)


@pytest.mark.parametrize("name", ["full", "freeze"])
def test_trains_and_keeps_the_rest(name: str) -> None:
    tuner = check_trains_and_keeps_the_rest(name)
    count = tuner.count()
    backbone = sum(p.numel() for p in tuner.segmentor.backbone.parameters())
    assert count.backbone == (backbone if name == "full" else 0)
    assert count.decoder > 0


def test_param_groups_follow_rein() -> None:
    tuner = build_tuner("full", tiny_segmentor())
    groups = {g["name"]: g for g in tuner.param_groups(lr=1e-4, weight_decay=0.05)}
    assert groups["backbone"]["lr"] == pytest.approx(1e-5)  # backbone lr × 0.1
    assert groups["decoder"]["lr"] == pytest.approx(1e-4)
    assert groups["backbone_no_decay"]["weight_decay"] == 0.0
    grouped = sum(p.numel() for g in groups.values() for p in g["params"])
    assert grouped == sum(tuner.count().__dict__.values())
    named = dict(tuner.segmentor.named_parameters())
    no_decay = {id(p) for p in groups["backbone_no_decay"]["params"]}
    assert id(named["backbone.model.blocks.0.norm1.weight"]) in no_decay
    assert id(named["backbone.model.cls_token"]) in no_decay


@pytest.mark.parametrize("name", ["full", "freeze"])
def test_save_and_load(name: str, tmp_path: Path) -> None:
    check_save_load(name, tmp_path)


def _perturbed_passes(model: nn.Module, tuner: Tuner, images: Tensor, passes: int) -> int:
    """How many of ``passes`` forward passes under the training context differ from the clean
    output; the decoder stays in eval mode, only the perturbed entry is in training mode."""
    model.eval()
    clean = model.predict(images)
    entry = model.backbone.model.norm_pre
    changed = 0
    with tuner.train_context():
        assert all(torch.equal(model.predict(images), clean) for _ in range(3)), "eval mode"
        entry.train()
        for _ in range(passes):
            changed += not torch.allclose(model.predict(images), clean)
    entry.eval()
    assert torch.equal(model.predict(images), clean)
    return changed


def test_train_perturbation_changes_training_outputs_half_the_time() -> None:
    """DSU as a training augmentation: about half of the training passes are perturbed."""
    model = tiny_segmentor()
    tuner = build_tuner("freeze", model, train_perturbation=True)
    torch.manual_seed(0)
    assert 8 <= _perturbed_passes(model, tuner, torch.randn(2, 3, 56, 56), 40) <= 32


@pytest.mark.parametrize(
    ("name", "decayed"),
    [
        ("backbone.model.blocks.0.norm1.weight", False),
        ("backbone.model.blocks.0.mlp.norm.bias", False),
        ("backbone.model.cls_token", False),
        ("backbone.model.pos_embed", False),
        ("backbone.rein.learnable_tokens_a", False),
        ("backbone.rein.scale", False),
        ("backbone.rein.token2feat.weight", True),
        ("backbone.model.patch_embed.proj.weight", True),
        ("head.transformer.queries_embedder.weight", False),
        ("head.pixel_decoder.level_embed", False),
        ("backbone.model.blocks.0.attn.qkv.weight", True),
    ],
)
def test_weight_decay_rules(name: str, decayed: bool) -> None:
    assert decays(name) is decayed


def test_train_perturbation_on_sam_maps() -> None:
    """SAM's blocks carry (B, H, W, C) maps: the statistics are taken over H and W."""
    model = tiny_sam_segmentor(window_size=2)
    tuner = build_tuner("freeze", model, train_perturbation=True)
    assert tuner._perturbation is not None
    assert tuner._perturbation.channels_last
    torch.manual_seed(0)
    assert _perturbed_passes(model, tuner, torch.randn(2, 3, 64, 64), 10) > 0


def test_config_object_of_the_wrong_method_is_rejected() -> None:
    from fishertune.tuners.lora import LoRAConfig

    with pytest.raises(TypeError, match="tuner 'vpt' needs a VPTConfig, got LoRAConfig"):
        build_tuner("vpt", tiny_segmentor(), config=LoRAConfig())
