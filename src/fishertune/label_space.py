"""The label space of every data set here: the 19 Cityscapes train ids, their names and
colours, and the ignore value.

Every data set's labels are converted to these train ids (:mod:`fishertune.data.labels` holds
the conversions from each data set's own ids); the metric, the losses, the decoders and the
figures read the names, colours and ignore value from here.
"""

from __future__ import annotations

__all__ = [
    "BICYCLE",
    "BUILDING",
    "BUS",
    "CAR",
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_PALETTE",
    "FENCE",
    "IGNORE_COLOR",
    "IGNORE_INDEX",
    "MOTORCYCLE",
    "NUM_CLASSES",
    "PERSON",
    "POLE",
    "RIDER",
    "ROAD",
    "SIDEWALK",
    "SKY",
    "TERRAIN",
    "TRAFFIC_LIGHT",
    "TRAFFIC_SIGN",
    "TRAIN",
    "TRUCK",
    "VEGETATION",
    "WALL",
]

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)
"""The 19 Cityscapes evaluation classes in train-id order (train id ``i`` is entry ``i``)."""

NUM_CLASSES = len(CITYSCAPES_CLASSES)
"""Cityscapes evaluation classes (train ids 0–18)."""

(
    ROAD,
    SIDEWALK,
    BUILDING,
    WALL,
    FENCE,
    POLE,
    TRAFFIC_LIGHT,
    TRAFFIC_SIGN,
    VEGETATION,
    TERRAIN,
    SKY,
    PERSON,
    RIDER,
    CAR,
    TRUCK,
    BUS,
    TRAIN,
    MOTORCYCLE,
    BICYCLE,
) = range(NUM_CLASSES)
"""The train id of each class by name, in the order of :data:`CITYSCAPES_CLASSES`."""

IGNORE_INDEX = 255
"""Train id of unlabelled pixels, excluded from the losses and the metrics."""

CITYSCAPES_PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128),  # road
    (244, 35, 232),  # sidewalk
    (70, 70, 70),  # building
    (102, 102, 156),  # wall
    (190, 153, 153),  # fence
    (153, 153, 153),  # pole
    (250, 170, 30),  # traffic light
    (220, 220, 0),  # traffic sign
    (107, 142, 35),  # vegetation
    (152, 251, 152),  # terrain
    (70, 130, 180),  # sky
    (220, 20, 60),  # person
    (255, 0, 0),  # rider
    (0, 0, 142),  # car
    (0, 0, 70),  # truck
    (0, 60, 100),  # bus
    (0, 80, 100),  # train
    (0, 0, 230),  # motorcycle
    (119, 11, 32),  # bicycle
)
"""The official RGB colour of the 19 Cityscapes train ids (entry ``i`` is train id ``i``)."""

IGNORE_COLOR: tuple[int, int, int] = (0, 0, 0)
"""Colour of ignored pixels (black)."""
