"""Segmentation metric, test protocols and multi-domain evaluation tables."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import Tensor, nn

from fishertune.evaluation import (
    CITYSCAPES_CLASSES,
    PROTOCOLS,
    DomainMetrics,
    DomainResults,
    EvalProtocol,
    SegmentationMetric,
    evaluate_domains,
    get_protocol,
)


def brute_force_iou(pred: Tensor, target: Tensor, k: int, ignore: int = 255) -> list[float]:
    """IoU per class by counting pixels one by one (NaN when the union is empty)."""
    pairs = [(int(p), int(t)) for p, t in zip(pred.flatten(), target.flatten(), strict=True)]
    pairs = [(p, t) for p, t in pairs if t != ignore]
    ious = []
    for c in range(k):
        inter = sum(1 for p, t in pairs if p == c and t == c)
        union = sum(1 for p, t in pairs if p == c or t == c)
        ious.append(inter / union if union else math.nan)
    return ious


def random_batch(
    seed: int, k: int = 5, shape: tuple[int, ...] = (2, 7, 9)
) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    pred = torch.randint(0, k, shape, generator=gen)
    target = torch.randint(0, k, shape, generator=gen)
    target[torch.rand(shape, generator=gen) < 0.2] = 255
    return pred, target


def test_metric_matches_brute_force() -> None:
    pred, target = random_batch(0)
    metric = SegmentationMetric(5)
    metric.update(pred, target)
    out = metric.compute()
    expected = torch.tensor(brute_force_iou(pred, target, 5), dtype=torch.float64)
    torch.testing.assert_close(out["iou"], expected, equal_nan=True)
    torch.testing.assert_close(out["miou"], expected.nanmean())
    keep = target != 255
    accuracy = (pred[keep] == target[keep]).double().mean()
    torch.testing.assert_close(out["pixel_acc"], accuracy)


def test_ignore_pixels_and_absent_classes() -> None:
    pred = torch.tensor([[[0, 0], [1, 3]]])
    target = torch.tensor([[[0, 1], [1, 255]]])  # the class-3 prediction is on an ignored pixel
    metric = SegmentationMetric(4)
    metric.update(pred, target)
    out = metric.compute()
    assert out["iou"][:2].tolist() == [0.5, 0.5]
    assert math.isnan(out["iou"][2])
    assert math.isnan(out["iou"][3])
    assert out["miou"].item() == 0.5  # mean over the two non-NaN classes only
    assert out["pixel_acc"].item() == pytest.approx(2 / 3)
    assert int(metric.confusion_matrix.sum()) == 3


def test_logits_input_and_accumulation() -> None:
    batches = [random_batch(seed) for seed in range(3)]
    accumulated = SegmentationMetric(5)
    for pred, target in batches:
        logits = F.one_hot(pred, 5).permute(0, 3, 1, 2).float() * 3 - 1
        accumulated.update(logits, target)
    once = SegmentationMetric(5)
    once.update(torch.cat([p for p, _ in batches]), torch.cat([t for _, t in batches]))
    assert torch.equal(accumulated.confusion_matrix, once.confusion_matrix)
    for key, value in once.compute().items():
        torch.testing.assert_close(accumulated.compute()[key], value, equal_nan=True)
    once.reset()
    assert int(once.confusion_matrix.sum()) == 0


def test_metric_rejects_bad_input() -> None:
    metric = SegmentationMetric(3)
    with pytest.raises(ValueError, match="outside"):
        metric.update(torch.tensor([[[0, 3]]]), torch.tensor([[[0, 1]]]))
    with pytest.raises(ValueError, match="classes"):
        metric.update(torch.zeros(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="do not match"):
        metric.update(
            torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 3, dtype=torch.long)
        )


def _distributed_worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        pred, target = random_batch(10 + rank)
        metric = SegmentationMetric(5)
        metric.update(pred, target)
        local = metric.confusion_matrix.clone()
        out = metric.compute()
        torch.save({"local": local, **out}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_distributed_confusion_matrix_is_summed(tmp_path: Path) -> None:
    mp.spawn(_distributed_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    single = SegmentationMetric(5)
    for rank in range(2):
        single.update(*random_batch(10 + rank))
    expected = single.compute()
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        # compute() reduces a copy: the local matrix holds only this rank's pixels.
        assert int(result["local"].sum()) < int(single.confusion_matrix.sum())
        for key, value in expected.items():
            torch.testing.assert_close(result[key], value, equal_nan=True)


def test_protocol_sizes() -> None:
    rein, fullres = get_protocol("rein"), get_protocol("fullres")
    assert rein.size_for("cityscapes") == (1024, 512)
    assert rein.size_for("Mapillary") == (1024, 512)
    assert rein.size_for("bdd100k") == (1280, 720)
    assert rein.size_for("GTAV") == (1280, 720)
    assert rein.size_for("acdc_night") == (960, 540)
    assert rein.size_for("something else") == rein.default_size
    assert fullres.size_for("cityscapes") == (2048, 1024)
    assert fullres.size_for("bdd100k") == (1280, 720)
    assert (rein.mode, rein.crop, rein.stride) == ("slide", 512, 341)
    # mmseg keep_ratio: 2048×1024 → 1024×512; GTAV's 1914×1052 is bounded by the long side.
    assert rein.resized_shape("cityscapes", 1024, 2048) == (512, 1024)
    assert rein.resized_shape("gtav", 1052, 1914) == (704, 1280)
    exact = dataclasses.replace(rein, keep_ratio=False)
    assert exact.resized_shape("gtav", 1052, 1914) == (720, 1280)
    assert set(PROTOCOLS) == {"rein", "fullres", "synthetic"}


def test_protocol_errors_and_record() -> None:
    with pytest.raises(
        ValueError, match="unknown evaluation protocol 'nope'; known: fullres, rein, synthetic"
    ):
        get_protocol("nope")
    with pytest.raises(ValueError, match="mode"):
        EvalProtocol("bad", {}, (4, 4), mode="sliding")
    with pytest.raises(ValueError, match="stride"):
        EvalProtocol("bad", {}, (4, 4), crop=4, stride=8)
    whole = get_protocol("rein").with_mode("whole")
    assert whole.mode == "whole"
    assert get_protocol("rein").mode == "slide"
    with pytest.raises(dataclasses.FrozenInstanceError):
        whole.crop = 3  # type: ignore[misc]
    record = get_protocol("fullres").to_dict()
    assert record["test_sizes"]["cityscapes"] == [2048, 1024]
    assert json.loads(json.dumps(record)) == record


class ImageScores(nn.Module):
    """Fake segmentor: the first K image channels are the scores; records each call."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.dummy = nn.Parameter(torch.zeros(()))
        self.calls: list[tuple[tuple[int, ...], str, bool]] = []

    def predict(
        self,
        images: Tensor,
        *,
        mode: str = "whole",
        crop_size: int | tuple[int, int] = 512,
        stride: int | tuple[int, int] = 341,
    ) -> Tensor:
        self.calls.append((tuple(images.shape), mode, self.training))
        return images[:, : self.num_classes].clone()


def test_evaluate_domains_resizes_images_not_labels() -> None:
    protocol = EvalProtocol("test", {"cityscapes": (8, 4)}, (6, 6), mode="whole", keep_ratio=False)
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 6, 10, generator=gen)
    labels = torch.randint(0, 3, (2, 6, 10), generator=gen)
    model = ImageScores(3)
    results = evaluate_domains(
        model,
        {"cityscapes": [(images, labels)], "other": [(images[:1], labels[:1])]},
        protocol=protocol,
        class_names=["a", "b", "c"],
    )
    assert model.calls == [((2, 3, 4, 8), "whole", False), ((1, 3, 6, 6), "whole", False)]
    assert model.training  # restored
    small = F.interpolate(images, size=(4, 8), mode="bilinear", align_corners=False)
    back = F.interpolate(small, size=(6, 10), mode="bilinear", align_corners=False)
    expected = brute_force_iou(back.argmax(1), labels, 3)
    assert results.domains["cityscapes"].iou == pytest.approx(expected)
    assert results.domains["cityscapes"].test_size == (8, 4)
    assert results.domains["other"].test_size == (6, 6)


GOLDEN_MARKDOWN = """\
Protocol `tiny`: whole; test scale alpha 2×2, beta 2×2

| Method | alpha | beta | Avg. (targets) |
| --- | ---: | ---: | ---: |
| toy | 100.00 | 33.33 | 66.67 |

| Domain | a | b | c | mIoU |
| --- | ---: | ---: | ---: | ---: |
| alpha | 100.00 | 100.00 | - | 100.00 |
| beta | 50.00 | 0.00 | 50.00 | 33.33 |
"""


def one_hot_batch(pred: list[list[int]], target: list[list[int]]) -> tuple[Tensor, Tensor]:
    scores = F.one_hot(torch.tensor(pred), 3).permute(2, 0, 1).float()
    return scores[None], torch.tensor(target)[None]


def test_evaluate_domains_tables(tmp_path: Path) -> None:
    protocol = EvalProtocol("tiny", {}, (2, 2), mode="whole", keep_ratio=False)
    domains = {
        "alpha": [one_hot_batch([[0, 0], [1, 1]], [[0, 0], [1, 255]])],
        "beta": [one_hot_batch([[0, 1], [2, 2]], [[0, 0], [2, 1]])],
    }
    results = evaluate_domains(
        ImageScores(3), domains, protocol=protocol, class_names=["a", "b", "c"], method="toy"
    )
    assert results.to_markdown() == GOLDEN_MARKDOWN
    results.to_json(tmp_path / "r.json")
    record = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert record["method"] == "toy"
    assert record["protocol"] == protocol.to_dict()
    assert record["domains"]["alpha"]["iou"] == {"a": 1.0, "b": 1.0, "c": None}
    assert record["domains"]["beta"]["miou"] == pytest.approx(1 / 3)
    assert record["target_average_miou"] == pytest.approx(2 / 3)
    back = DomainResults.from_dict(record)
    assert back.to_dict() == record
    assert back.protocol == protocol
    assert math.isnan(back.domains["alpha"].iou[2])


def test_class_table_has_the_cityscapes_columns() -> None:
    assert len(CITYSCAPES_CLASSES) == 19
    assert CITYSCAPES_CLASSES[6:8] == ("traffic light", "traffic sign")
    metrics = DomainMetrics(iou=(0.5,) * 19, miou=0.5, pixel_acc=0.9, test_size=(1024, 512))
    results = DomainResults("m", get_protocol("rein"), CITYSCAPES_CLASSES, {"cityscapes": metrics})
    header = results.class_table().splitlines()[0]
    assert header == "| Domain | " + " | ".join(CITYSCAPES_CLASSES) + " | mIoU |"
    assert results.domain_table().splitlines()[2] == "| m | 50.00 | 50.00 |"


def test_the_protocol_line_names_each_data_sets_split() -> None:
    """ACDC's test labels are not public: its table says it was evaluated on val."""
    metrics = DomainMetrics(iou=(0.5,) * 19, miou=0.5, pixel_acc=0.9, test_size=(960, 540))
    domains = {"acdc": metrics, "nighttime_driving": metrics, "source": metrics}
    results = DomainResults("m", get_protocol("rein"), CITYSCAPES_CLASSES, domains)
    line = results.to_markdown().splitlines()[0]
    assert "acdc (val) 960×540" in line
    assert "nighttime_driving (test) 960×540" in line
    assert "source 960×540" in line
