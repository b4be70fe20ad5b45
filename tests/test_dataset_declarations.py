"""What every registered data set declares: its splits, its test sizes and its label conversion."""

from __future__ import annotations

import pytest

from fishertune.data.registry import DATASETS
from fishertune.evaluation.protocols import get_protocol
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
}
"""The ``rein`` test size ``(W, H)`` of every registered data set (the values the protocol's
name-prefix table gave before the data sets declared them)."""

TEST_SIZES = {
    "rein": REIN,
    "fullres": {**REIN, "cityscapes": (2048, 1024)},
    "synthetic": dict.fromkeys(REIN, (256, 128)),
}
"""Protocol → data set → test size ``(W, H)``."""


@pytest.mark.parametrize("protocol", sorted(TEST_SIZES))
def test_every_data_set_keeps_its_test_size(protocol: str) -> None:
    chosen = get_protocol(protocol)
    assert {name: chosen.size_for(name) for name in TEST_SIZES[protocol]} == TEST_SIZES[protocol]
    assert set(TEST_SIZES[protocol]) <= set(DATASETS)


def test_named_train_ids_follow_the_class_order() -> None:
    assert [CITYSCAPES_CLASSES[i] for i in (ROAD, TRAFFIC_LIGHT, SKY, TRAIN, BICYCLE)] == [
        "road",
        "traffic light",
        "sky",
        "train",
        "bicycle",
    ]
