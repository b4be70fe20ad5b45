"""Tests of the procedural domain-generalisation benchmark (``fishertune.data.synthetic``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fishertune.data.synthetic import (
    STYLES,
    SyntheticStreets,
    generate_scene,
    render_sample,
    render_styles,
    scene_seed,
)
from fishertune.label_space import CITYSCAPES_CLASSES

ROAD, CAR = 0, 13
SEEDS = range(6)


@pytest.fixture(scope="module")
def rendered() -> list[tuple[dict[str, np.ndarray], np.ndarray]]:
    """Every style of a handful of scenes."""
    return [render_styles(scene_seed(0, "val", i)) for i in SEEDS]


def test_dataset_items_are_deterministic_and_well_formed() -> None:
    first = SyntheticStreets("train", "source", length=3, seed=7)
    again = SyntheticStreets("train", "source", length=3, seed=7)
    other = SyntheticStreets("train", "source", length=3, seed=8)
    image, label = first[1]
    assert image.dtype == torch.uint8
    assert image.shape == (3, 128, 256)
    assert label.dtype == torch.int64
    assert label.shape == (128, 256)
    assert len(first) == 3
    for index in range(3):
        assert torch.equal(first[index][0], again[index][0])
        assert torch.equal(first[index][1], again[index][1])
        assert not torch.equal(first[index][0], other[index][0])
    assert not torch.equal(first[0][1], first[1][1])
    val = SyntheticStreets("val", "source", length=1, seed=7)
    assert not torch.equal(first[0][1], val[0][1])
    with pytest.raises(IndexError):
        first[3]


def test_dataset_options_and_errors() -> None:
    flips = SyntheticStreets(
        "test",
        "fog",
        size=(64, 96),
        length=2,
        transform=lambda image, label: (image.flip(-1), label.flip(-1)),
    )
    plain = SyntheticStreets("test", "fog", size=(64, 96), length=2)
    image, label = flips[0]
    assert image.shape == (3, 64, 96)
    assert label.shape == (64, 96)
    assert torch.equal(image, plain[0][0].flip(-1))
    with pytest.raises(ValueError, match="style"):
        SyntheticStreets("train", "sepia")
    with pytest.raises(ValueError, match="split"):
        SyntheticStreets("holdout", "source")
    with pytest.raises(ValueError, match="style"):
        render_sample(0, "sepia")


def test_labels_are_train_ids_covering_many_classes(
    rendered: list[tuple[dict[str, np.ndarray], np.ndarray]],
) -> None:
    seen: set[int] = set()
    for _, label in rendered:
        values = set(np.unique(label).tolist())
        assert values <= set(range(len(CITYSCAPES_CLASSES))) | {255}
        seen |= values
    assert len(seen) >= 10


def test_every_style_keeps_the_label_and_changes_the_image(
    rendered: list[tuple[dict[str, np.ndarray], np.ndarray]],
) -> None:
    for seed in (scene_seed(0, "val", 0), scene_seed(0, "val", 1)):
        images, label = render_styles(seed)
        for style in STYLES:
            image, same = render_sample(seed, style)
            assert np.array_equal(same, label)
            assert np.array_equal(image, images[style])
    for images, _ in rendered:
        source = images["source"].astype(np.float32)
        for style in STYLES[1:]:
            assert np.abs(images[style].astype(np.float32) - source).mean() > 10.0, style


def test_perspective_near_cars_are_bigger_and_lower() -> None:
    rows, sizes = [], []
    for seed in range(12):
        scene = generate_scene(np.random.default_rng(seed))
        for thing in scene.objects:
            mask = scene.instance == thing.instance
            if thing.category != CAR or mask.sum() < 4:
                continue
            rows.append(np.nonzero(mask)[0].max())
            sizes.append(np.ptp(np.nonzero(mask)[1]) + 1)
            assert np.allclose(scene.depth[mask], thing.depth)
    assert len(rows) >= 10
    assert np.corrcoef(rows, sizes)[0, 1] > 0.8


def test_things_carry_their_depth_and_stand_in_front_of_the_ground() -> None:
    scene = generate_scene(np.random.default_rng(3))
    things = scene.instance > 0
    depth_of = {thing.instance: thing.depth for thing in scene.objects}
    visible = np.array([depth_of[i] for i in scene.instance[things]])
    assert np.allclose(visible, scene.depth[things])
    ground = np.isin(scene.label, (0, 1, 9)) & scene.horizontal
    assert scene.depth[ground].max() > scene.depth[things].max()
    assert (scene.label[scene.depth >= 1000] == 10).all()


def test_fog_reduces_contrast_with_depth(
    rendered: list[tuple[dict[str, np.ndarray], np.ndarray]],
) -> None:
    for seed in (scene_seed(0, "val", i) for i in SEEDS):
        scene = generate_scene(np.random.default_rng(np.random.SeedSequence((seed, 0))))
        images, _ = render_styles(seed)
        fog = images["fog"].astype(np.float32)
        source = images["source"].astype(np.float32)
        near = scene.depth < 12
        far = (scene.depth > 60) & (scene.label != 10)
        ratio_near = fog[near].std() / source[near].std()
        ratio_far = fog[far].std() / source[far].std()
        assert ratio_far < ratio_near


def test_night_is_dark_and_snow_whitens_the_road(
    rendered: list[tuple[dict[str, np.ndarray], np.ndarray]],
) -> None:
    for images, label in rendered:
        source = images["source"].astype(np.float32)
        assert images["night"].astype(np.float32).mean() < 0.5 * source.mean()
        road = label == ROAD
        assert images["snow"][road].astype(np.float32).mean() > source[road].mean() + 20
        assert images["rain"].astype(np.float32).mean() < source.mean() + 10


def test_style_figure_and_render_time(tmp_path: Path) -> None:
    from matplotlib.image import imread

    from fishertune.reporting.plots import style_figure

    path = style_figure([1, 2], tmp_path / "styles.png", size=(32, 48))
    height, width = imread(path).shape[:2]
    assert width > 2 * height  # six labelled columns, two rows
    with pytest.raises(ValueError, match="at least one scene seed"):
        style_figure([], tmp_path / "none.png")
    dataset = SyntheticStreets("train", "source", length=5)
    start = time.perf_counter()
    for index in range(len(dataset)):
        dataset[index]
    print(f"render time: {(time.perf_counter() - start) / len(dataset) * 1e3:.1f} ms per image")


def test_rendered_items_are_cached_and_returned_as_copies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fishertune.data.synthetic import dataset as module

    calls: list[int] = []
    render = module.render_sample

    def counting(seed: int, style: str, size: tuple[int, int]) -> Any:
        calls.append(seed)
        return render(seed, style, size)

    monkeypatch.setattr(module, "render_sample", counting)
    monkeypatch.setattr(module, "_cache", module.OrderedDict())
    monkeypatch.setattr(module, "_cache_bytes", 0)
    data = SyntheticStreets("val", "fog", size=(32, 64), length=3, seed=11)
    image, label = data[1]
    image[:] = 0
    label[:] = 0
    again_image, again_label = data[1]
    assert len(calls) == 1  # rendered once
    fresh_image, fresh_label = (torch.from_numpy(a) for a in render(calls[0], "fog", (32, 64)))
    assert torch.equal(again_image, fresh_image.permute(2, 0, 1))
    assert torch.equal(again_label, fresh_label)
    assert again_label.dtype == torch.int64
    # the budget evicts the least recently used items
    monkeypatch.setattr(module, "CACHE_BYTES", 1)
    data[0]
    data[2]
    assert len(module._cache) == 1


def test_prepare_renders_every_item_into_the_cache() -> None:
    """A run calls prepare() before its clocks start: afterwards every item is a cache hit."""
    from fishertune.data.synthetic import dataset as module

    data = SyntheticStreets("val", "fog", size=(16, 32), length=5, seed=123)
    keys = [(module.scene_seed(123, "val", i), "fog", (16, 32)) for i in range(5)]
    for key in keys:
        module._cache.pop(key, None)
    data.prepare()
    assert all(key in module._cache for key in keys)


def test_the_scene_class_constants_are_the_label_spaces_train_ids() -> None:
    from fishertune.data.synthetic import scenes

    for train_id, name in enumerate(CITYSCAPES_CLASSES):
        constant = name.upper().replace(" ", "_")
        if hasattr(scenes, constant):
            assert getattr(scenes, constant) == train_id, name
    assert len(CITYSCAPES_CLASSES) - 1 == scenes.BICYCLE
