"""Segmentation heads behind one interface (:class:`SegmentationHead`)."""

from fishertune.models.heads.base import SegmentationHead
from fishertune.models.heads.linear import LinearHead
from fishertune.models.heads.mask2former import Mask2FormerHead

__all__ = ["LinearHead", "Mask2FormerHead", "SegmentationHead"]
