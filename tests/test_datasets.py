"""The DGSS dataset loaders on tiny trees in the official layouts (``tests/data_fixtures.py``)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from data_fixtures import (
    H,
    W,
    build_acdc,
    build_bdd100k,
    build_cityscapes,
    build_dark_zurich,
    build_foggy_driving,
    build_foggy_zurich,
    build_gtav,
    build_mapillary,
    build_nighttime_driving,
    build_synthia,
    id_pattern,
    write_grey_png,
    write_image,
    write_png16,
)
from fishertune.data import (
    ACDC,
    BDD100K,
    DATASETS,
    GTAV,
    Cityscapes,
    DarkZurich,
    DatasetError,
    FoggyDriving,
    FoggyZurich,
    LabelValueError,
    MapillaryVistas,
    NighttimeDriving,
    SegmentationDataset,
    Synthia,
    build_dataset,
)
from fishertune.data.labels import cityscapes_label_map
from fishertune.data.registry import FILE_DATASETS
from fishertune.data.synthia import read_synthia_label

TRAIN_IDS = (0, 5, 13, 18, 255)


def expected(ids: tuple[int, ...]) -> Tensor:
    """The (H, W) int64 label a fixture built from ``ids`` should load as."""
    return torch.from_numpy(id_pattern(ids))


def check_items(dataset: SegmentationDataset, length: int, label: Tensor) -> None:
    """Every item is (uint8 (3, H, W), int64 (H, W)) and carries ``label``."""
    assert len(dataset) == length
    for i in range(length):
        image, target = dataset[i]
        assert image.dtype == torch.uint8
        assert image.shape == (3, H, W)
        assert target.dtype == torch.int64
        assert target.shape == (H, W)
        assert torch.equal(target, label)


def test_gtav_prefers_converted_train_ids(tmp_path: Path) -> None:
    build_gtav(tmp_path, ids=(7, 26), train_ids=(1, 2))
    dataset = GTAV(tmp_path)
    assert [p.label.name for p in dataset.pairs] == [
        f"{i:05d}_labelTrainIds.png" for i in (1, 2, 3)
    ]
    check_items(dataset, 3, expected((1, 2)))


def test_gtav_maps_palette_ids_to_train_ids(tmp_path: Path) -> None:
    pytest.importorskip("cityscapesscripts")
    build_gtav(tmp_path, ids=(7, 26, 0, 11, 33, 24, 3))
    check_items(GTAV(tmp_path), 3, expected((0, 13, 255, 2, 18, 11, 255)))


def test_gtav_check_rejects_ids_outside_the_table(tmp_path: Path) -> None:
    pytest.importorskip("cityscapesscripts")
    build_gtav(tmp_path, ids=(7, 40), n=1)
    assert torch.equal(GTAV(tmp_path)[0][1], expected((0, 255)))
    with pytest.raises(LabelValueError, match=r"00001\.png.*\[40\]"):
        GTAV(tmp_path, check=True)[0]


def test_cityscapes_table_comes_from_cityscapesscripts() -> None:
    labels = pytest.importorskip("cityscapesscripts.helpers.labels")
    table = cityscapes_label_map().table
    for label in labels.labels:
        if label.id >= 0:
            train = label.trainId if 0 <= label.trainId < 19 else 255
            assert table[label.id] == train
    assert sorted(v for v in table.values() if v != 255) == list(range(19))


def test_cityscapes_label_ids_without_cityscapesscripts_say_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "cityscapesscripts.helpers.labels", None)
    with pytest.raises(ImportError, match="pip install cityscapesscripts"):
        cityscapes_label_map.__wrapped__()


def test_cityscapes_train_ids(tmp_path: Path) -> None:
    build_cityscapes(tmp_path, "val", ids=TRAIN_IDS, kind="labelTrainIds")
    dataset = Cityscapes(tmp_path, "val")
    assert [p.image.parent.name for p in dataset.pairs] == ["aachen", "bremen", "bremen"]
    check_items(dataset, 3, expected(TRAIN_IDS))


def test_cityscapes_label_ids(tmp_path: Path) -> None:
    pytest.importorskip("cityscapesscripts")
    build_cityscapes(tmp_path, "train", ids=(7, 8, 26, 0, 1), kind="labelIds")
    check_items(Cityscapes(tmp_path, "train"), 3, expected((0, 1, 13, 255, 255)))


def test_synthia_16bit_labels_map_to_train_ids(tmp_path: Path) -> None:
    synthia = (3, 4, 2, 21, 5, 7, 15, 9, 6, 1, 10, 17, 8, 19, 12, 11)
    train = (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18)
    build_synthia(tmp_path / "a", ids=synthia)
    check_items(Synthia(tmp_path / "a"), 2, expected(train))
    # void, terrain, truck, train, lane marking and parking are not among the 16 classes
    build_synthia(tmp_path / "b", ids=(0, 16, 18, 20, 22, 13))
    check_items(Synthia(tmp_path / "b"), 2, expected((255,) * 6))


@pytest.mark.parametrize("depth", [3, 4])
def test_synthia_reader_keeps_all_16_bits_of_the_first_channel(tmp_path: Path, depth: int) -> None:
    values = np.arange(H * W, dtype=np.int64).reshape(H, W) * 509 % 65536
    channels = np.stack([values, 65535 - values, values // 3, values // 7][:depth], axis=-1)
    path = write_png16(tmp_path / "label.png", channels)
    np.testing.assert_array_equal(read_synthia_label(path), values)


def test_synthia_check_rejects_ids_outside_the_table(tmp_path: Path) -> None:
    build_synthia(tmp_path, ids=(3, 23, 300), n=1)
    assert torch.equal(Synthia(tmp_path)[0][1], expected((0, 255, 255)))
    with pytest.raises(LabelValueError, match=r"0000000\.png.*\[23, 300\]"):
        Synthia(tmp_path, check=True)[0]


def test_bdd100k(tmp_path: Path) -> None:
    build_bdd100k(tmp_path, "val", ids=TRAIN_IDS)
    check_items(BDD100K(tmp_path), 2, expected(TRAIN_IDS))
    build_bdd100k(tmp_path, "train", ids=(3,))
    check_items(BDD100K(tmp_path, "train"), 2, expected((3,)))


def test_mapillary_maps_by_the_names_in_config(tmp_path: Path) -> None:
    names = [
        "animal--bird",
        "construction--flat--road",
        "marking--general",
        "construction--barrier--curb",
        "object--street-light",
        "object--traffic-sign--back",
        "object--vehicle--on-rails",
        "human--rider--motorcyclist",
        "object--vehicle--car",
        "nature--sky",
        "void--unlabeled",
        "construction--flat--crosswalk-plain",
        "marking--crosswalk-zebra",
        "construction--flat--pedestrian-area",
        "object--support--pole",
        "nature--terrain",
        "construction--flat--curb-cut",  # Rein's choices for these three
        "object--support--traffic-sign-frame",
        "object--support--utility-pole",
    ]
    build_mapillary(tmp_path, "validation", names, ids=tuple(range(19)))
    train = (255, 0, 0, 1, 5, 7, 16, 12, 13, 10, 255, 0, 0, 1, 5, 9, 1, 7, 5)
    check_items(MapillaryVistas(tmp_path), 2, expected(train))
    # the table follows the file's order, not a fixed index list
    build_mapillary(tmp_path / "reversed", "training", names[::-1], ids=tuple(range(19)))
    check_items(MapillaryVistas(tmp_path / "reversed", "training"), 2, expected(train[::-1]))


def test_mapillary_check_rejects_indices_beyond_the_config(tmp_path: Path) -> None:
    build_mapillary(tmp_path, "validation", ["construction--flat--road"], ids=(0, 65))
    assert torch.equal(MapillaryVistas(tmp_path)[0][1], expected((0, 255)))
    with pytest.raises(LabelValueError, match=r"labels.*\.png.*\[65\]"):
        MapillaryVistas(tmp_path, check=True)[0]


def test_mapillary_needs_its_config(tmp_path: Path) -> None:
    build_mapillary(tmp_path, "validation", ["nature--sky"], ids=(0,))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"config\.json.*'labels'"):
        MapillaryVistas(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        MapillaryVistas(tmp_path)


def test_acdc_conditions(tmp_path: Path) -> None:
    build_acdc(tmp_path, ("fog", "night", "rain", "snow"), "val", ids=TRAIN_IDS)
    check_items(ACDC(tmp_path), 8, expected(TRAIN_IDS))
    night = ACDC(tmp_path, "val", conditions=("night",))
    assert len(night) == 2
    assert all(p.image.parts[-4] == "night" and p.label.parts[-4] == "night" for p in night.pairs)
    with pytest.raises(ValueError, match="conditions"):
        ACDC(tmp_path, conditions=("haze",))


def test_night_and_fog_test_sets(tmp_path: Path) -> None:
    build_dark_zurich(tmp_path / "dz", ids=TRAIN_IDS)
    check_items(DarkZurich(tmp_path / "dz"), 2, expected(TRAIN_IDS))
    build_nighttime_driving(tmp_path / "nd", ids=TRAIN_IDS)
    check_items(NighttimeDriving(tmp_path / "nd"), 2, expected(TRAIN_IDS))
    build_foggy_zurich(tmp_path / "fz", ids=TRAIN_IDS)
    check_items(FoggyZurich(tmp_path / "fz"), 2, expected(TRAIN_IDS))
    build_foggy_driving(tmp_path / "fd", ids=TRAIN_IDS)
    driving = FoggyDriving(tmp_path / "fd")
    assert [p.label.parts[-4] for p in driving.pairs] == ["gtFine", "gtCoarse"]
    check_items(driving, 2, expected(TRAIN_IDS))


def test_foggy_zurich_label_without_image_is_named(tmp_path: Path) -> None:
    build_foggy_zurich(tmp_path, ids=TRAIN_IDS)
    orphan = write_grey_png(
        tmp_path / "gt_labelTrainIds/test/GP010475/orphan.png", id_pattern((0,))
    )
    with pytest.raises(FileNotFoundError, match=str(orphan)):
        FoggyZurich(tmp_path)


def test_registry_builds_every_family(tmp_path: Path) -> None:
    build_gtav(tmp_path / "gtav", ids=(7,), train_ids=(0,))
    build_synthia(tmp_path / "synthia", ids=(3,))
    build_cityscapes(tmp_path / "cityscapes", "train", ids=(0,), kind="labelTrainIds")
    build_bdd100k(tmp_path / "bdd100k", "val", ids=(0,))
    build_mapillary(tmp_path / "mapillary", "validation", ["construction--flat--road"], ids=(0,))
    build_acdc(tmp_path / "acdc", ("fog", "night", "rain", "snow"), "val", ids=(0,))
    build_dark_zurich(tmp_path / "dark_zurich", ids=(0,))
    build_nighttime_driving(tmp_path / "nighttime_driving", ids=(0,))
    build_foggy_zurich(tmp_path / "foggy_zurich", ids=(0,))
    build_foggy_driving(tmp_path / "foggy_driving", ids=(0,))
    for name in FILE_DATASETS:
        cls = DATASETS[name]
        dataset = build_dataset(name, tmp_path / name)
        assert type(dataset) is cls
        assert dataset.split == cls.splits[0]  # type: ignore[attr-defined]
        assert torch.equal(dataset[0][1], torch.zeros(H, W, dtype=torch.int64))
    assert len(build_dataset("acdc", tmp_path / "acdc", "val", conditions=["snow"])) == 2
    with pytest.raises(ValueError, match=r"unknown dataset 'gta5'.*'gtav'"):
        build_dataset("gta5", tmp_path / "gtav")
    with pytest.raises(ValueError, match=r"no split 'train'.*'val'"):
        build_dataset("dark_zurich", tmp_path / "dark_zurich", "train")


def test_transform_and_data_loader(tmp_path: Path) -> None:
    build_bdd100k(tmp_path, "val", ids=TRAIN_IDS)

    def flip(image: Tensor, label: Tensor) -> tuple[Tensor, Tensor]:
        return image.flip(-1).float() / 255, label.flip(-1)

    dataset = BDD100K(tmp_path, transform=flip)
    raw = BDD100K(tmp_path)
    image, label = dataset[1]
    assert torch.equal(image, raw[1][0].flip(-1).float() / 255)
    assert torch.equal(label, expected(TRAIN_IDS).flip(-1))
    images, labels = next(iter(DataLoader(dataset, batch_size=2)))
    assert images.shape == (2, 3, H, W)
    assert labels.shape == (2, H, W)


def test_missing_root_and_empty_tree(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Cityscapes(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"nothing matches .*leftImg8bit/val/\*/\*"):
        Cityscapes(tmp_path, "val")
    with pytest.raises(FileNotFoundError, match=r"nothing matches .*gt_labelTrainIds"):
        FoggyZurich(tmp_path)


def test_image_without_label_is_named(tmp_path: Path) -> None:
    images = build_bdd100k(tmp_path, "val", ids=TRAIN_IDS)
    lonely = write_image(tmp_path / "images/10k/val/zz-lonely.jpg")
    with pytest.raises(FileNotFoundError, match=rf"{lonely}.*masks/val/zz-lonely\.png"):
        BDD100K(tmp_path)
    lonely.unlink()
    assert len(BDD100K(tmp_path)) == len(images)


def test_unreadable_files_are_named(tmp_path: Path) -> None:
    images = build_acdc(tmp_path, ("rain",), "val", ids=TRAIN_IDS)
    dataset = ACDC(tmp_path, conditions=("rain",))
    dataset.pairs[1].label.write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=str(dataset.pairs[1].label)):
        dataset[1]
    images[0].write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    with pytest.raises(DatasetError, match=str(images[0])):
        dataset[0]


def test_wrong_label_format_is_named(tmp_path: Path) -> None:
    build_gtav(tmp_path, ids=(0,), n=1, train_ids=(0,))
    label = tmp_path / "labels/00001_labelTrainIds.png"
    write_image(label)  # a colour image where ids are expected
    with pytest.raises(DatasetError, match=rf"{label}.*mode 'RGB'"):
        GTAV(tmp_path)[0]
    synthia = tmp_path / "synthia"
    build_synthia(synthia, ids=(3,), n=1)
    write_image(synthia / "GT/LABELS/0000000.png")
    with pytest.raises(DatasetError, match="8-bit colour"):
        Synthia(synthia)[0]


def test_size_mismatch_names_both_files(tmp_path: Path) -> None:
    images = build_dark_zurich(tmp_path, ids=TRAIN_IDS)
    write_image(images[0], size=(H, W + 2))
    with pytest.raises(DatasetError, match=rf"{images[0]} is 18x8 but label .*labelTrainIds"):
        DarkZurich(tmp_path)[0]


def test_label_check_on_train_ids(tmp_path: Path) -> None:
    build_bdd100k(tmp_path, "val", ids=(0, 19, 254))
    assert torch.equal(BDD100K(tmp_path)[0][1], expected((0, 255, 255)))
    with pytest.raises(LabelValueError, match=r"masks/val/.*\.png: values \[19, 254\]"):
        BDD100K(tmp_path, check=True)[0]


def test_a_decompression_bomb_is_named_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    from fishertune.data.base import read_rgb

    path = tmp_path / "huge.png"
    Image.new("RGB", (64, 64)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 × 64 > 2 × 1000: a "bomb"
    with pytest.raises(DatasetError, match=r"huge\.png: it has more pixels than Pillow's limit"):
        read_rgb(path)


def test_a_16_bit_grey_image_is_scaled_not_clipped(tmp_path: Path) -> None:
    from PIL import Image

    from fishertune.data.base import read_rgb

    values = np.array([[0, 257, 32896], [65535, 514, 1000]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    rgb = read_rgb(path)
    assert rgb.shape == (2, 3, 3)
    assert rgb.dtype == np.uint8
    expected = np.rint(values / 257.0).astype(np.uint8)
    assert np.array_equal(rgb[..., 0], expected)
    assert np.array_equal(rgb[..., 2], expected)
