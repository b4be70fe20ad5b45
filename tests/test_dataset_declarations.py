"""What every registered data set declares: its splits, its test sizes and its label conversion."""

from __future__ import annotations

from pathlib import Path

import pytest

from fishertune.data.base import SegmentationDataset, per_protocol
from fishertune.data.labels import LabelConversion
from fishertune.data.registry import DATASETS, declared_test_size, open_dataset
from fishertune.data.synthetic import SyntheticSettings, SyntheticStreets
from fishertune.evaluation.protocols import PROTOCOLS, get_protocol
from fishertune.label_space import BICYCLE, CITYSCAPES_CLASSES, ROAD, SKY, TRAFFIC_LIGHT, TRAIN

REIN = {
    "gtav": (1280, 720),
    "synthia": (1024, 512),
    "cityscapes": (1024, 512),
    "bdd100k": (1280, 720),
    "mapillary": (1024, 512),
    "acdc": (960, 540),
    "dark_zurich": (1024, 512),
    "nighttime_driving": (1024, 512),
    "foggy_zurich": (1024, 512),
    "foggy_driving": (1024, 512),
    "synthetic": (1024, 512),
}
"""The ``rein`` test size ``(W, H)`` of every registered data set (the values the protocol's
name-prefix table gave before the data sets declared them)."""

TEST_SIZES = {
    "rein": REIN,
    "fullres": {**REIN, "cityscapes": (2048, 1024)},
    "synthetic": dict.fromkeys(REIN, (256, 128)),
}
"""Protocol → data set → test size ``(W, H)``."""

DECLARATIONS = ("splits", "train_split", "eval_split", "test_sizes", "label_conversion")
"""What every data set class must declare (``label_conversion`` may be ``None``)."""


def missing_declarations(cls: type[SegmentationDataset]) -> list[str]:
    """The declarations ``cls`` leaves out or gets wrong, each as a line naming it."""
    problems = [f"no {name}" for name in DECLARATIONS if not hasattr(cls, name)]
    if problems:
        return problems
    splits = cls.splits
    if cls.train_split is not None and cls.train_split not in splits:
        problems.append(f"train_split {cls.train_split!r} is not one of {splits}")
    if cls.eval_split not in splits:
        problems.append(f"eval_split {cls.eval_split!r} is not one of {splits}")
    if set(cls.test_sizes) != set(PROTOCOLS):
        problems.append(f"test_sizes for {sorted(cls.test_sizes)}, not {sorted(PROTOCOLS)}")
    if cls.label_conversion is not None and not isinstance(cls.label_conversion, LabelConversion):
        problems.append(f"label_conversion {cls.label_conversion!r} is not a LabelConversion")
    return problems


@pytest.mark.parametrize("name", list(DATASETS))
def test_every_registered_data_set_declares_everything(name: str) -> None:
    assert missing_declarations(DATASETS[name]) == []


def test_a_missing_declaration_is_caught() -> None:
    class Undeclared(SegmentationDataset):
        splits = ("train", "val")
        train_split = "train"
        eval_split = "valid"
        test_sizes = per_protocol(rein=(8, 4))

    assert missing_declarations(Undeclared) == ["no label_conversion"]
    Undeclared.label_conversion = None
    assert missing_declarations(Undeclared) == [
        "eval_split 'valid' is not one of ('train', 'val')",
        "test_sizes for ['rein'], not ['fullres', 'rein', 'synthetic']",
    ]


@pytest.mark.parametrize("protocol", sorted(TEST_SIZES))
def test_every_data_set_keeps_its_test_size(protocol: str) -> None:
    chosen = get_protocol(protocol)
    assert {name: chosen.size_for(name) for name in TEST_SIZES[protocol]} == TEST_SIZES[protocol]
    assert set(TEST_SIZES[protocol]) == set(DATASETS)
    for name in DATASETS:
        declared = declared_test_size(name, protocol)
        assert declared is None or declared == chosen.size_for(name)


def test_an_undeclared_protocol_is_one_line_naming_both() -> None:
    with pytest.raises(ValueError, match=r"^dataset 'gtav' declares no test size for protocol "):
        declared_test_size("gtav", "kitti-protocol")
    with pytest.raises(ValueError, match="unknown dataset 'kitti'"):
        declared_test_size("kitti", "rein")


def test_splits_for_training_and_evaluation() -> None:
    trains = {name: cls.train_split for name, cls in DATASETS.items()}
    evaluates = {name: cls.eval_split for name, cls in DATASETS.items()}
    assert trains == {
        "synthetic": "train",
        "gtav": "all",
        "synthia": "all",
        "cityscapes": "train",
        "bdd100k": "train",
        "mapillary": "training",
        "acdc": "train",
        "dark_zurich": None,
        "nighttime_driving": None,
        "foggy_zurich": None,
        "foggy_driving": None,
    }
    assert evaluates == {
        "synthetic": "val",
        "gtav": "all",
        "synthia": "all",
        "cityscapes": "val",
        "bdd100k": "val",
        "mapillary": "validation",
        "acdc": "val",
        "dark_zurich": "val",
        "nighttime_driving": "test",
        "foggy_zurich": "test",
        "foggy_driving": "test",
    }
    converted = [name for name, cls in DATASETS.items() if cls.label_conversion is not None]
    assert converted == ["gtav", "synthia", "mapillary"]


def test_the_benchmark_opens_like_the_others(tmp_path: Path) -> None:
    settings = SyntheticSettings(size=(32, 64), seed=3)
    fog = open_dataset("synthetic", "val", domain="fog", limit=5, synthetic=settings)
    assert isinstance(fog, SyntheticStreets)
    assert (fog.split, fog.style, fog.size, fog.seed, len(fog)) == ("val", "fog", (32, 64), 3, 5)
    source = open_dataset("synthetic", "train")
    assert isinstance(source, SyntheticStreets)
    assert (source.style, source.size, len(source)) == ("source", (128, 256), 500)
    with pytest.raises(ValueError, match=r"no domain 'sepia'; choose from \('source', 'fog'"):
        open_dataset("synthetic", "val", domain="sepia")
    with pytest.raises(ValueError, match=r"'gtav' has no domain 'fog' \(it is one domain\)"):
        open_dataset("gtav", "all", domain="fog", root=tmp_path)
    with pytest.raises(ValueError, match="'gtav' is read from files: it needs its root"):
        open_dataset("gtav", "all")


def test_named_train_ids_follow_the_class_order() -> None:
    assert [CITYSCAPES_CLASSES[i] for i in (ROAD, TRAFFIC_LIGHT, SKY, TRAIN, BICYCLE)] == [
        "road",
        "traffic light",
        "sky",
        "train",
        "bicycle",
    ]
