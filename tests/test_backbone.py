"""The timm VFM wrapper: families, features, weights, parameter groups (issue 3)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

from fishertune.models.backbone import (
    PretrainedWeightsUnavailableError,
    ViTBackbone,
    default_out_indices,
)
from fishertune.models.parameter_groups import KINDS, count_by_kind, parameter_groups
from fishertune.models.weights import CheckpointError

TINY = {"depth": 4, "embed_dim": 32, "num_heads": 2}
# One tiny configuration of each family's real timm architecture.
FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "dinov2": ("vit_small_patch14_dinov2", {}),
    "dinov2_reg4": ("vit_small_patch14_reg4_dinov2", {}),
    "eva02_fused": ("eva02_tiny_patch14_224", {}),
    "eva02_separate": ("eva02_large_patch14_448", {}),
    "clip": ("vit_base_patch16_clip_224", {}),
    "sam": ("samvit_base_patch16", {"global_attn_indexes": (3,), "window_size": 4}),
    "mae": ("vit_base_patch16_224.mae", {}),
}


def build(family: str, **extra: Any) -> ViTBackbone:
    name, kwargs = FAMILIES[family]
    return ViTBackbone(name, img_size=64, **TINY, **kwargs, **extra)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_features_at_any_multiple_of_the_patch_size(family: str) -> None:
    backbone = build(family)
    p = backbone.patch_size
    images = torch.randn(2, 3, 3 * p, 5 * p, requires_grad=True)
    features = backbone(images)
    assert len(features) == len(backbone.out_indices) == 4
    assert all(f.shape == (2, backbone.embed_dim, 3, 5) for f in features)
    torch.autograd.backward(sum(f.square().mean() for f in features))
    assert images.grad is not None
    assert all(q.grad is not None for q in backbone.blocks[0].parameters())
    with pytest.raises(ValueError, match="not a multiple of the patch size"):
        backbone(torch.randn(1, 3, 3 * p + 1, 5 * p))


def test_default_out_indices_follow_rein() -> None:
    assert default_out_indices(24) == (7, 11, 15, 23)
    assert default_out_indices(12) == (3, 5, 7, 11)
    assert default_out_indices(32) == (10, 15, 20, 31)


def test_blocks_after_the_last_index_are_dropped() -> None:
    backbone = ViTBackbone("vit_small_patch14_dinov2", img_size=56, out_indices=(0, 1), **TINY)
    assert len(backbone.blocks) == 2
    assert not any(name.startswith("model.norm.") for name, _ in backbone.named_parameters())


def test_normalisation_constants_come_from_the_pretrained_config() -> None:
    clip = build("clip")
    assert clip.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    images = torch.rand(1, 3, 4, 4)
    want = (images - torch.tensor(clip.mean).view(1, 3, 1, 1)) / torch.tensor(clip.std).view(
        1, 3, 1, 1
    )
    torch.testing.assert_close(clip.normalize(images), want)
    assert "pixel_mean" not in clip.state_dict()


def test_native_size_matches_timm() -> None:
    """Interpolated position embeddings give timm's own output at the native size."""
    torch.manual_seed(0)
    ours = ViTBackbone("vit_small_patch14_dinov2", img_size=56, out_indices=(1, 3), **TINY)
    reference = timm.create_model(
        "vit_small_patch14_dinov2", img_size=56, num_classes=0, **TINY
    ).eval()
    reference.load_state_dict(ours.model.state_dict(), strict=False)
    ours.eval()
    images = torch.randn(2, 3, 56, 56)
    want = reference.forward_intermediates(images, indices=[1, 3], intermediates_only=True)
    for got, expected in zip(ours(images), want, strict=True):
        torch.testing.assert_close(got, expected)


def test_patch_size_resampling() -> None:
    backbone = ViTBackbone("vit_small_patch14_dinov2", img_size=64, patch_size=16, **TINY)
    assert backbone.patch_size == 16
    assert backbone(torch.randn(1, 3, 64, 96))[0].shape[-2:] == (4, 6)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".bin"])
def test_checkpoint_round_trip(tmp_path: Path, suffix: str) -> None:
    torch.manual_seed(0)
    source = build("dinov2").eval()
    state = source.model.state_dict()
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"model": state}, path)  # a container, unwrapped on load
    torch.manual_seed(1)
    loaded = build("dinov2", checkpoint=path).eval()
    assert loaded.load_report is not None
    assert loaded.load_report.clean
    images = torch.randn(1, 3, 56, 56)
    for a, b in zip(source(images), loaded(images), strict=True):
        assert torch.equal(a, b)


def test_mismatched_checkpoint_is_reported(tmp_path: Path) -> None:
    other = ViTBackbone("vit_small_patch14_dinov2", img_size=64, depth=4, embed_dim=48, num_heads=2)
    path = tmp_path / "wide.safetensors"
    save_file({k: v.contiguous() for k, v in other.model.state_dict().items()}, str(path))
    with pytest.raises(CheckpointError, match=r"wide\.safetensors"):
        build("dinov2", checkpoint=path)
    partial = tmp_path / "partial.safetensors"
    state = build("dinov2").model.state_dict()
    state.pop("blocks.0.attn.qkv.weight")
    state["extra.weight"] = torch.zeros(2)
    save_file({k: v.contiguous() for k, v in state.items()}, str(partial))
    with pytest.raises(CheckpointError, match=r"missing in the checkpoint \(1\)") as info:
        build("dinov2", checkpoint=partial)
    assert "extra.weight" in str(info.value)
    lenient = build("dinov2", checkpoint=partial, strict=False)
    assert lenient.load_report is not None
    assert lenient.load_report.missing == ["blocks.0.attn.qkv.weight"]


def test_bad_checkpoint_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"unsupported checkpoint type '\.ckpt'"):
        build("dinov2", checkpoint=tmp_path / "w.ckpt")
    with pytest.raises(CheckpointError, match="not found"):
        build("dinov2", checkpoint=tmp_path / "absent.pth")
    pickled = tmp_path / "object.pth"
    torch.save({"model": nn.Linear(2, 2)}, pickled)  # a module object: refused, not unpickled
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        build("dinov2", checkpoint=pickled)


def test_offline_pretrained_tag_gives_instructions() -> None:
    code = (
        "from fishertune.models.backbone import ViTBackbone\n"
        "ViTBackbone('vit_small_patch14_dinov2.lvd142m', pretrained=True, img_size=56)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    assert "PretrainedWeightsUnavailableError" in done.stderr
    assert "checkpoint=PATH" in done.stderr


def test_an_unreachable_hub_fails_at_once_without_asking_timm(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Weights not cached and no network: the error comes before timm's download retries
    (which took about a minute); with the weights cached, timm is asked."""
    from fishertune.models import backbone as module

    asked: list[str] = []

    def create_model(name: str, **kwargs: object) -> None:
        asked.append(name)
        raise RuntimeError("offline")

    monkeypatch.setattr(module.timm, "create_model", create_model)
    monkeypatch.setattr(module, "_hub_reachable", lambda: False)
    monkeypatch.setattr(module, "try_to_load_from_cache", lambda repo, name: None)
    with pytest.raises(PretrainedWeightsUnavailableError, match="cannot be reached"):
        ViTBackbone("vit_small_patch14_dinov2.lvd142m", pretrained=True, img_size=56)
    assert asked == []
    monkeypatch.setattr(module, "try_to_load_from_cache", lambda repo, name: f"/cache/{name}")
    with pytest.raises(PretrainedWeightsUnavailableError, match="could not fetch"):
        ViTBackbone("vit_small_patch14_dinov2.lvd142m", pretrained=True, img_size=56)
    assert asked == ["vit_small_patch14_dinov2.lvd142m"]


def test_unknown_model_name() -> None:
    with pytest.raises(ValueError, match="unknown timm model 'vit_tiny_unicorn'"):
        ViTBackbone("vit_tiny_unicorn")


def _projections(attn: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Q, K, V projections of tokens ``x`` computed from the attention module's tensors."""
    qkv = getattr(attn, "qkv", None)
    if qkv is None:
        return attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
    bias = qkv.bias
    if bias is None and getattr(attn, "q_bias", None) is not None:  # EVA: separate q/v biases
        bias = torch.cat([attn.q_bias, torch.zeros_like(attn.q_bias), attn.v_bias])
    q, k, v = F.linear(x, qkv.weight, bias).chunk(3, dim=-1)
    return q, k, v


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_parameter_groups_cover_everything_once_with_the_right_qkv_split(family: str) -> None:
    backbone = build(family)
    groups = parameter_groups(backbone)
    params = dict(backbone.named_parameters())
    coverage = {name: torch.zeros_like(p, dtype=torch.int32) for name, p in params.items()}
    for g in groups:
        assert g.kind in KINDS
        coverage[g.name][g.index] += 1
    assert all(bool((c == 1).all()) for c in coverage.values())
    counts = count_by_kind(backbone)
    assert sum(counts.values()) == sum(p.numel() for p in params.values())
    assert min(counts[k] for k in ("Q", "K", "V", "O", "FFN1", "FFN2")) > 0

    block = 1
    attn = backbone.blocks[block].attn
    x = torch.randn(3, backbone.embed_dim)
    base = _projections(attn, x)
    checked = set()
    for g in groups:
        if g.block != block or g.kind not in ("Q", "K", "V"):
            continue
        saved = params[g.name].detach().clone()
        with torch.no_grad():
            params[g.name][g.index] += 1.0
            moved = _projections(attn, x)
            params[g.name].copy_(saved)
        changed = {
            kind for kind, a, b in zip("QKV", base, moved, strict=True) if not torch.equal(a, b)
        }
        assert changed == {g.kind}, f"{g.name}{g.index} is {g.kind} but changed {changed}"
        checked.add(g.kind)
    assert checked == {"Q", "K", "V"}
    if family == "sam":
        rel = [g for g in groups if g.name.endswith("rel_pos_h")]
        assert rel
        assert all(g.kind == "other" for g in rel)
    if family == "eva02_separate":
        kinds = {g.name.split(".")[-2]: g.kind for g in groups if g.block == 0}
        assert kinds["fc1_g"] == kinds["fc1_x"] == "FFN1"
        assert kinds["q_proj"] == "Q"


def _same_features(a: ViTBackbone, b: ViTBackbone) -> None:
    a.eval()
    b.eval()
    images = torch.randn(1, 3, 4 * a.patch_size, 4 * a.patch_size)
    for x, y in zip(a(images), b(images), strict=True):
        torch.testing.assert_close(x, y)


def test_official_dinov2_layout_with_registers(tmp_path: Path) -> None:
    """Meta's layout: mask_token, register_tokens, class position inside pos_embed."""
    torch.manual_seed(0)
    source = build("dinov2_reg4")
    state = {k: v.clone() for k, v in source.model.state_dict().items()}
    cls_pos = torch.randn(1, 1, state["pos_embed"].shape[-1])
    official = {k: v for k, v in state.items() if k not in ("reg_token", "cls_token", "pos_embed")}
    official["register_tokens"] = state["reg_token"]
    official["cls_token"] = state["cls_token"] - cls_pos
    official["pos_embed"] = torch.cat([cls_pos, state["pos_embed"]], dim=1)
    official["mask_token"] = torch.zeros(1, state["pos_embed"].shape[-1])
    path = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(official, path)
    loaded = build("dinov2_reg4", checkpoint=path)
    _same_features(source, loaded)


def test_official_eva02_layout(tmp_path: Path) -> None:
    """BAAI's layout: mlp.w1/w2/w3 and ffn_ln, q_bias/v_bias, rope buffers, MIM extras."""
    torch.manual_seed(0)
    source = build("eva02_separate")
    renames = {
        "mlp.fc1_g": "mlp.w1",
        "mlp.fc1_x": "mlp.w2",
        "mlp.fc2": "mlp.w3",
        "mlp.norm": "mlp.ffn_ln",
        "attn.q_proj.bias": "attn.q_bias",
        "attn.v_proj.bias": "attn.v_bias",
    }
    official: dict[str, Tensor] = {}
    for key, value in source.model.state_dict().items():
        for timm_name, eva_name in renames.items():
            key = key.replace(timm_name, eva_name)
        official[key] = value.clone()
    official["rope.freqs_cos"] = torch.zeros(4, 4)
    path = tmp_path / "eva02_L_pt_m38m_p14.pt"
    torch.save({"module": official}, path)
    loaded = build("eva02_separate", checkpoint=path)
    _same_features(source, loaded)


def test_position_embeddings_resampled_from_another_grid(tmp_path: Path) -> None:
    big = ViTBackbone("vit_small_patch14_dinov2", img_size=112, **TINY)
    path = tmp_path / "big.safetensors"
    save_file({k: v.contiguous() for k, v in big.model.state_dict().items()}, str(path))
    small = build("dinov2", checkpoint=path)
    assert small.load_report is not None
    assert small.load_report.clean
    assert small.model.pos_embed.shape != big.model.pos_embed.shape


def test_patch_14_weights_resampled_into_a_patch_16_model(tmp_path: Path) -> None:
    """Rein's 14 → 16 resampling of the patch embedding when loading a checkpoint."""
    source = build("dinov2")
    path = tmp_path / "p14.safetensors"
    save_file({k: v.contiguous() for k, v in source.model.state_dict().items()}, str(path))
    resampled = build("dinov2", patch_size=16, checkpoint=path)
    assert resampled.load_report is not None
    assert resampled.load_report.clean
    assert resampled.model.patch_embed.proj.weight.shape[-2:] == (16, 16)
    original = source.model.blocks[0].attn.qkv.weight
    assert torch.equal(resampled.model.blocks[0].attn.qkv.weight, original)
