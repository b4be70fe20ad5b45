"""The demo ViT: timm registration, the shipped weights, and its pretraining recipe."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import timm
import torch
from cityscapesscripts.helpers.labels import labels as cityscapes_labels
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer

from fishertune.data.synthetic import STYLES, SyntheticStreets
from fishertune.models import (
    DEMO_VIT_NAME,
    PretrainedWeightsUnavailableError,
    ViTBackbone,
    build_segmentor,
    count_by_kind,
    demo_vit,
)
from fishertune.models.demo_vit import DEMO_IMAGE_SIZE, demo_vit_weights_path
from fishertune.workflows.pretrain_demo import (
    PRETEXT_CATEGORIES,
    coarse_labels,
    pretrain_demo_backbone,
    render_corpus,
)

TINY = {"steps": 2, "corpus_size": 6, "batch_size": 2, "eval_scenes": 1, "progress": False}


def test_registered_architecture() -> None:
    assert DEMO_VIT_NAME == "fishertune_demo_vit"
    assert DEMO_VIT_NAME in timm.list_models()
    model = timm.create_model(DEMO_VIT_NAME)
    assert isinstance(model, VisionTransformer)
    assert model.patch_embed.patch_size == (8, 8)
    assert model.patch_embed.grid_size == (8, 16)
    assert (model.embed_dim, len(model.blocks), model.blocks[0].attn.num_heads) == (192, 6, 3)
    assert model.num_classes == 0
    assert tuple(model.pretrained_cfg["mean"]) == (0.485, 0.456, 0.406)
    assert tuple(model.pretrained_cfg["std"]) == (0.229, 0.224, 0.225)
    assert model(torch.zeros(1, 3, *DEMO_IMAGE_SIZE)).shape == (1, 192)


def test_shipped_weights_load_into_segmentor() -> None:
    path = demo_vit_weights_path()
    stored = load_file(path)
    assert all(t.dtype == torch.float16 for t in stored.values())
    assert set(stored) == set(timm.create_model(DEMO_VIT_NAME).state_dict())

    segmentor = build_segmentor(
        DEMO_VIT_NAME, head="linear", num_classes=19, img_size=DEMO_IMAGE_SIZE, pretrained=True
    )
    backbone = segmentor.backbone
    assert isinstance(backbone, ViTBackbone)
    assert backbone.mean == (0.485, 0.456, 0.406)
    loaded = backbone.model.state_dict()
    for key, value in loaded.items():
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, stored[key].float(), rtol=0, atol=0)
    candidates = count_by_kind(backbone)
    assert all(candidates[kind] > 0 for kind in ("Q", "K", "V", "FFN1", "FFN2"))
    logits = segmentor(torch.rand(2, 3, *DEMO_IMAGE_SIZE))
    assert logits.shape == (2, 19, *DEMO_IMAGE_SIZE)
    assert torch.isfinite(logits).all()


def test_shipped_weights_resample_to_other_sizes() -> None:
    backbone = ViTBackbone(DEMO_VIT_NAME, pretrained=True, img_size=(128, 256))
    assert backbone.model.pos_embed.shape == (1, 1 + 16 * 32, 192)
    features = backbone(torch.rand(1, 3, 128, 256))
    assert features[-1].shape == (1, 192, 16, 32)


def test_shipped_sidecar_matches_file() -> None:
    path = demo_vit_weights_path()
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert sidecar["recipe"]["model"] == DEMO_VIT_NAME
    assert sidecar["recipe"]["pretext"]["categories"] == list(PRETEXT_CATEGORIES)
    assert 0.5 < sidecar["metrics"]["pixel_accuracy"] <= 1
    assert set(sidecar["metrics"]["style_accuracy"]) == set(STYLES)


def test_missing_weights_tell_how_to_make_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(demo_vit, "demo_vit_weights_path", lambda: tmp_path / "none.safetensors")
    with pytest.raises(
        PretrainedWeightsUnavailableError, match="fishertune pretrain-demo-backbone"
    ):
        timm.create_model(DEMO_VIT_NAME, pretrained=True)
    with pytest.raises(
        PretrainedWeightsUnavailableError, match="fishertune pretrain-demo-backbone"
    ):
        build_segmentor(DEMO_VIT_NAME, img_size=DEMO_IMAGE_SIZE, pretrained=True)
    timm.create_model(DEMO_VIT_NAME, pretrained=False)


def test_coarse_categories_follow_cityscapes() -> None:
    train_ids = [label for label in cityscapes_labels if 0 <= label.trainId < 19]
    assert sorted(label.trainId for label in train_ids) == list(range(19))
    ids = torch.tensor([label.trainId for label in train_ids] + [255])
    mapped = coarse_labels(ids).tolist()
    expected = [PRETEXT_CATEGORIES.index(label.category) for label in train_ids] + [255]
    assert mapped == expected
    assert coarse_labels(torch.tensor([[0, 10], [13, 255]])).tolist() == [[0, 4], [6, 255]]


def test_corpus_cycles_styles_on_scenes_apart_from_the_benchmark() -> None:
    images, labels, styles = render_corpus("train", 7, 0, cycle=True, progress=False)
    assert styles == [*STYLES, STYLES[0]]
    assert images.shape == (7, 3, *DEMO_IMAGE_SIZE)
    assert images.dtype == torch.uint8
    assert set(labels.unique().tolist()) <= {*range(len(PRETEXT_CATEGORIES)), 255}
    benchmark_image, benchmark_ids = SyntheticStreets(
        "train", "source", size=DEMO_IMAGE_SIZE, length=1
    )[0]
    assert not torch.equal(labels[0], coarse_labels(benchmark_ids))
    assert not torch.equal(images[0], benchmark_image)


def test_pretraining_is_deterministic(tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    first = pretrain_demo_backbone(tmp_path / "a" / "vit.safetensors", seed=0, **TINY)
    assert torch.equal(torch.rand(3), expected_draw)  # the caller's RNG is left alone
    second = pretrain_demo_backbone(tmp_path / "b" / "vit.safetensors", seed=0, **TINY)
    other = pretrain_demo_backbone(tmp_path / "c" / "vit.safetensors", seed=1, **TINY)

    a, b, c = (load_file(result.path) for result in (first, second, other))
    assert set(a) == set(timm.create_model(DEMO_VIT_NAME).state_dict())
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert first.path.read_bytes() == second.path.read_bytes()
    assert not all(torch.equal(a[key], c[key]) for key in a)

    sidecar = json.loads(first.path.with_suffix(".json").read_text())
    assert sidecar["sha256"] == hashlib.sha256(first.path.read_bytes()).hexdigest()
    assert sidecar["recipe"] == first.recipe
    assert first.recipe["steps"] == 2
    assert first.recipe["data"]["scene_seed"] == 1000
    assert sidecar["metrics"]["final_loss"] == first.final_loss
    assert 0 <= first.pixel_accuracy <= 1
    assert set(first.style_accuracy) == set(STYLES)
    assert sorted(p.name for p in first.path.parent.iterdir()) == ["vit.json", "vit.safetensors"]
