"""DGSS segmentation datasets in their official layouts, as Cityscapes train-id samples."""

from __future__ import annotations

from fishertune.data.acdc import ACDC, ACDC_CONDITIONS
from fishertune.data.base import DatasetError, Pair, SegmentationDataset, Transform
from fishertune.data.bdd100k import BDD100K
from fishertune.data.cityscapes import Cityscapes
from fishertune.data.foggy import FoggyDriving, FoggyZurich
from fishertune.data.gtav import GTAV
from fishertune.data.labels import LabelMap, LabelValueError
from fishertune.data.mapillary import MapillaryVistas
from fishertune.data.night import DarkZurich, NighttimeDriving
from fishertune.data.registry import DATASETS, build_dataset
from fishertune.data.synthia import Synthia
from fishertune.label_space import IGNORE_INDEX, NUM_CLASSES

__all__ = [
    "ACDC",
    "ACDC_CONDITIONS",
    "BDD100K",
    "DATASETS",
    "GTAV",
    "IGNORE_INDEX",
    "NUM_CLASSES",
    "Cityscapes",
    "DarkZurich",
    "DatasetError",
    "FoggyDriving",
    "FoggyZurich",
    "LabelMap",
    "LabelValueError",
    "MapillaryVistas",
    "NighttimeDriving",
    "Pair",
    "SegmentationDataset",
    "Synthia",
    "Transform",
    "build_dataset",
]
