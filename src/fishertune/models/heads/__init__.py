"""Segmentation heads behind one interface (:class:`SegmentationHead`)."""
