"""DGSS evaluation: confusion-matrix metric, test protocols, multi-domain tables.

``evaluate_domains(model, {"cityscapes": loader, ...}, protocol="rein",
class_names=CITYSCAPES_CLASSES)`` returns :class:`DomainResults`, whose ``to_markdown()``
gives the paper's Table-1 (mIoU per domain + the target average) and Table-2 (IoU per class)
layouts and ``to_json(path)`` the full record, protocol included.
"""

from fishertune.evaluation.domains import (
    AVERAGE_HEADER,
    SOURCE_DOMAIN,
    DomainMetrics,
    DomainResults,
    Predictor,
    evaluate_domains,
    target_average,
)
from fishertune.evaluation.metric import SegmentationMetric
from fishertune.evaluation.protocols import MODES, PROTOCOLS, EvalProtocol, get_protocol
from fishertune.label_space import CITYSCAPES_CLASSES

__all__ = [
    "AVERAGE_HEADER",
    "CITYSCAPES_CLASSES",
    "MODES",
    "PROTOCOLS",
    "SOURCE_DOMAIN",
    "DomainMetrics",
    "DomainResults",
    "EvalProtocol",
    "Predictor",
    "SegmentationMetric",
    "evaluate_domains",
    "get_protocol",
    "target_average",
]
