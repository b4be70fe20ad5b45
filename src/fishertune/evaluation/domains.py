"""Multi-domain evaluation and the paper's result tables (Table 1 by domain, Table 2 by class)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Parameter

from fishertune.data.registry import DATASETS
from fishertune.evaluation.intervals import json_number, number
from fishertune.evaluation.metric import SegmentationMetric
from fishertune.evaluation.protocols import EvalProtocol, get_protocol
from fishertune.progress import track


class Predictor(Protocol):
    """What :func:`evaluate_domains` needs of a model (a :class:`~fishertune.models.Segmentor`)."""

    training: bool

    def predict(
        self,
        images: Tensor,
        *,
        mode: str = ...,
        crop_size: int | tuple[int, int] = ...,
        stride: int | tuple[int, int] = ...,
    ) -> Tensor:
        """Scores ``(B, K, H, W)`` at the input size, without gradients."""
        ...

    def train(self, mode: bool = ...) -> object:
        """Set training (True) or evaluation (False) mode."""
        ...

    def parameters(self, recurse: bool = ...) -> Iterator[Parameter]:
        """The model's parameters (their device is the default evaluation device)."""
        ...


SOURCE_DOMAIN = "source"
"""Name under which the source domain's validation images are evaluated and reported."""

AVERAGE_HEADER = "Avg. (targets)"
"""Column of the mean mIoU over the unseen target domains (the source domain excluded)."""


def target_average(miou: Mapping[str, float], source: str | None = SOURCE_DOMAIN) -> float:
    """The paper's Table 1 "Avg.": the mean mIoU over every domain of ``miou`` except
    ``source`` (the unseen targets only). NaN when there is no target or one is NaN; the one
    definition that train, compare, the demo, the report and the study all print."""
    values = [value for name, value in miou.items() if name != source]
    return math.fsum(values) / len(values) if values else math.nan


@dataclass(frozen=True)
class DomainMetrics:
    """One domain's result: IoU per class, mIoU, pixel accuracy (fractions) and test scale."""

    iou: tuple[float, ...]
    miou: float
    pixel_acc: float
    test_size: tuple[int, int]


def _percent(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.2f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [
        "| " + " | ".join(header) + " |",
        "| --- |" + " ---: |" * (len(header) - 1),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]
    return "\n".join(lines)


@dataclass(frozen=True)
class DomainResults:
    """Per-domain metrics of one model under one protocol, with the paper's tables.

    ``domains`` keeps the evaluation order, which is the column order of Table 1.
    """

    method: str
    protocol: EvalProtocol
    class_names: tuple[str, ...]
    domains: Mapping[str, DomainMetrics]

    @property
    def target_average(self) -> float:
        """:func:`target_average` of these results: the mean mIoU over every domain but
        :data:`SOURCE_DOMAIN` (Table 1's "Avg."); NaN with no target domain."""
        return target_average({name: m.miou for name, m in self.domains.items()})

    def domain_table(self) -> str:
        """Table 1: one row (the method), a column per domain's mIoU and the target average
        (:data:`AVERAGE_HEADER`), ×100."""
        header = ["Method", *self.domains, AVERAGE_HEADER]
        row = [self.method, *(_percent(m.miou) for m in self.domains.values())]
        return _table(header, [[*row, _percent(self.target_average)]])

    def class_table(self) -> str:
        """Table 2: a row per domain, a column per class IoU and the mIoU, ×100 ("-": NaN)."""
        header = ["Domain", *self.class_names, "mIoU"]
        rows = [
            [name, *(_percent(v) for v in metrics.iou), _percent(metrics.miou)]
            for name, metrics in self.domains.items()
        ]
        return _table(header, rows)

    def to_markdown(self) -> str:
        """The protocol line, Table 1 and Table 2, separated by blank lines."""
        p = self.protocol
        scales = ", ".join(
            f"{name}{_split_note(name)} {m.test_size[0]}×{m.test_size[1]}"
            for name, m in self.domains.items()
        )
        inference = f"slide {p.crop}/{p.stride}" if p.mode == "slide" else "whole"
        line = f"Protocol `{p.name}`: {inference}; test scale {scales}"
        return f"{line}\n\n{self.domain_table()}\n\n{self.class_table()}\n"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record: fractions in [0, 1], ``null`` for NaN, the full protocol."""
        return {
            "method": self.method,
            "protocol": self.protocol.to_dict(),
            "class_names": list(self.class_names),
            "domains": {
                name: {
                    "miou": json_number(m.miou),
                    "pixel_acc": json_number(m.pixel_acc),
                    "iou": {
                        c: json_number(v) for c, v in zip(self.class_names, m.iou, strict=True)
                    },
                    "test_size": list(m.test_size),
                }
                for name, m in self.domains.items()
            },
            "target_average_miou": json_number(self.target_average),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DomainResults:
        """Inverse of :meth:`to_dict` (``null`` reads back as NaN)."""
        names = tuple(str(c) for c in data["class_names"])
        return cls(
            str(data["method"]),
            EvalProtocol.from_dict(data["protocol"]),
            names,
            {
                str(domain): DomainMetrics(
                    iou=tuple(number(m["iou"][c]) for c in names),
                    miou=number(m["miou"]),
                    pixel_acc=number(m["pixel_acc"]),
                    test_size=(int(m["test_size"][0]), int(m["test_size"][1])),
                )
                for domain, m in data["domains"].items()
            },
        )

    def to_json(self, path: str | Path) -> None:
        """Write :meth:`to_dict` to ``path`` (indented, UTF-8)."""
        text = json.dumps(self.to_dict(), indent=2, ensure_ascii=False)
        Path(path).write_text(text + "\n", encoding="utf-8")


def _split_note(domain: str) -> str:
    """`` (val)``-style: the split a registered data set is evaluated on (ACDC and the others
    whose test labels are not public are evaluated on their validation split); "" else."""
    cls = DATASETS.get(domain)
    return f" ({cls.eval_split})" if cls is not None and not cls.domains else ""


def protocol_scores(
    model: Predictor,
    images: Tensor,
    protocol: EvalProtocol,
    domain: str,
    size: tuple[int, int] | torch.Size,
) -> Tensor:
    """The class scores of ``images`` predicted as the protocol tests ``domain``: resized to
    its test size (:meth:`EvalProtocol.resized_shape`), run in its mode (whole or sliding
    windows), and the scores resized back (bilinearly, as mmseg) to ``size`` ``(H, W)``."""
    height, width = images.shape[-2:]
    tested = protocol.resized_shape(domain, height, width)
    if tested != (height, width):
        images = F.interpolate(images, size=tested, mode="bilinear", align_corners=False)
    scores = model.predict(
        images, mode=protocol.mode, crop_size=protocol.crop, stride=protocol.stride
    )
    if tuple(scores.shape[-2:]) != tuple(size):
        scores = F.interpolate(scores, size=tuple(size), mode="bilinear", align_corners=False)
    return scores


def evaluate_domains(
    model: Predictor,
    domains: Mapping[str, Iterable[tuple[Tensor, Tensor]]],
    *,
    protocol: EvalProtocol | str,
    class_names: Sequence[str],
    device: torch.device | str | None = None,
    progress: bool = False,
    method: str = "model",
) -> DomainResults:
    """Evaluate ``model`` on every domain under ``protocol`` (an instance or a registered name).

    Each domain yields ``(images, labels)``: ``(B, 3, H, W)`` float images and ``(B, H, W)``
    long labels with 255 for ignored pixels, at the dataset's original resolution. As in mmseg,
    images are resized (bilinear) to the protocol's test size for the domain
    (:meth:`EvalProtocol.resized_shape`), labels are not: the scores ``(B, K, h, w)`` are
    resized back to the label resolution by bilinear interpolation before the argmax. The model
    is put in eval mode for the call and restored afterwards; ``device`` defaults to that of
    its parameters (CPU if it has none). Under ``torch.distributed`` give each rank its shard
    of every domain: the confusion matrices are summed, so all ranks return the full result.
    """
    protocol = get_protocol(protocol) if isinstance(protocol, str) else protocol
    names = tuple(class_names)
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    was_training = model.training
    model.train(False)
    results: dict[str, DomainMetrics] = {}
    try:
        for domain, batches in domains.items():
            metric = SegmentationMetric(len(names), device=device)
            for images, labels in track(batches, f"eval {domain}", enabled=progress):
                images, labels = images.to(device), labels.to(device)
                scores = protocol_scores(model, images, protocol, domain, labels.shape[-2:])
                metric.update(scores, labels)
            values = metric.compute()
            results[domain] = DomainMetrics(
                iou=tuple(float(v) for v in values["iou"]),
                miou=float(values["miou"]),
                pixel_acc=float(values["pixel_acc"]),
                test_size=protocol.size_for(domain),
            )
    finally:
        model.train(was_training)
    return DomainResults(method, protocol, names, results)
