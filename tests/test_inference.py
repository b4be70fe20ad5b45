"""Evaluation and prediction from checkpoints (fishertune.workflows.checkpoint_evaluation and
fishertune.workflows.prediction) on a tiny run."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from data_fixtures import build_cityscapes
from fishertune.data.base import DatasetError
from fishertune.data.synthetic import SyntheticStreets
from fishertune.engine.batches import evaluation_transform
from fishertune.engine.trainer import Trainer
from fishertune.engine.tuned_model import load_trained
from fishertune.evaluation.domains import evaluate_domains, protocol_scores
from fishertune.label_space import CITYSCAPES_CLASSES
from fishertune.models import ViTBackbone
from fishertune.reporting.palette import colorize, overlay
from fishertune.workflows.checkpoint_evaluation import evaluate_checkpoint
from fishertune.workflows.prediction import predict_images
from run_fixtures import tiny_config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LoRA run on the synthetic benchmark (source + fog + night, 4 images each)."""
    directory = tmp_path_factory.mktemp("run") / "run"
    Trainer(tiny_config(directory, "lora"), progress=False, device="cpu").run()
    return directory


@pytest.fixture
def last(run_dir: Path) -> Path:
    """The final checkpoint, whose weights the run's results.json was computed with."""
    return run_dir / "checkpoints" / "last.json"


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Records how many images evaluate_domains is given per domain."""
    counts: dict[str, int] = {}

    def spy(model: Any, domains: Mapping[str, Iterable[Any]], **kwargs: Any) -> Any:
        counts.update({name: len(loader.dataset) for name, loader in domains.items()})  # type: ignore[attr-defined]
        return evaluate_domains(model, domains, **kwargs)

    monkeypatch.setattr("fishertune.engine.sharded_eval.evaluate_domains", spy)
    return counts


def _miou(results: Any) -> dict[str, float]:
    return {name: metrics.miou for name, metrics in results.domains.items()}


def test_defaults_reproduce_the_trainers_final_results(
    run_dir: Path, last: Path, counted: dict[str, int]
) -> None:
    expected = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    results = evaluate_checkpoint(last, device="cpu", progress=False)
    assert list(results.domains) == ["source", "fog", "night"]
    assert counted == {"source": 4, "fog": 4, "night": 4}
    assert results.method == "lora"
    assert results.to_dict() == expected


def test_style_entries_evaluate_only_those_styles(run_dir: Path, last: Path) -> None:
    expected = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))["domains"]
    results = evaluate_checkpoint(last, data=["night", "source"], device="cpu", progress=False)
    assert list(results.domains) == ["night", "source"]
    assert _miou(results) == {name: expected[name]["miou"] for name in ("night", "source")}
    fog = evaluate_checkpoint(last, data=["fog"], device="cpu", progress=False)
    assert _miou(fog) == {"fog": expected["fog"]["miou"]}


def test_eval_images_overrides_the_runs_count(last: Path, counted: dict[str, int]) -> None:
    evaluate_checkpoint(last, eval_images=2, device="cpu", progress=False)
    assert counted == {"source": 2, "fog": 2, "night": 2}
    evaluate_checkpoint(last, data=["snow"], eval_images=3, device="cpu", progress=False)
    assert counted["snow"] == 3
    with pytest.raises(ValueError, match="eval_images"):
        evaluate_checkpoint(last, eval_images=0, device="cpu", progress=False)


def test_registered_dataset_entry(tmp_path: Path, last: Path, counted: dict[str, int]) -> None:
    root = tmp_path / "cityscapes"
    build_cityscapes(root, "val", [0, 1, 2, 255], "labelTrainIds")
    results = evaluate_checkpoint(
        last, data=[f"cityscapes={root}", "fog"], device="cpu", progress=False
    )
    assert list(results.domains) == ["cityscapes", "fog"]
    assert counted == {"cityscapes": 3, "fog": 4}
    evaluate_checkpoint(
        last, data=[f"cityscapes={root}"], eval_images=2, device="cpu", progress=False
    )
    assert counted["cityscapes"] == 2


@pytest.mark.parametrize(
    ("entries", "named"),
    [
        (["sepia"], ["'sepia'", "fog", "NAME=ROOT", "cityscapes"]),
        (["cityscapes"], ["'cityscapes'", "NAME=ROOT"]),
        (["kitti=/data/kitti"], ["'kitti=/data/kitti'", "NAME=ROOT", "cityscapes"]),
        (["cityscapes="], ["'cityscapes='", "ROOT"]),
        (["fog", "fog"], ["'fog'", "twice"]),
    ],
)
def test_bad_data_entries_are_named(last: Path, entries: list[str], named: list[str]) -> None:
    with pytest.raises(ValueError, match="data entry") as caught:
        evaluate_checkpoint(last, data=entries, device="cpu", progress=False)
    for text in named:
        assert text in str(caught.value)


def test_protocol_and_mode_overrides(last: Path) -> None:
    results = evaluate_checkpoint(last, data=["fog"], mode="slide", device="cpu", progress=False)
    assert results.protocol.mode == "slide"
    assert results.protocol.default_size == (64, 32)  # the run's synthetic size is kept
    rein = evaluate_checkpoint(last, data=["fog"], protocol="rein", device="cpu", progress=False)
    assert (rein.protocol.name, rein.protocol.mode) == ("rein", "whole")
    with pytest.raises(ValueError, match="unknown evaluation protocol"):
        evaluate_checkpoint(last, protocol="nope", device="cpu", progress=False)


def _write_scene(path: Path, style: str, size: tuple[int, int]) -> np.ndarray[Any, Any]:
    image, _ = SyntheticStreets("val", style, size=size, length=1, seed=5)[0]
    rgb = image.permute(1, 2, 0).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return rgb


def test_predict_images_writes_masks_overlays_and_ids(tmp_path: Path, last: Path) -> None:
    first = tmp_path / "in" / "street.png"
    second = tmp_path / "other" / "street.png"  # same stem: must not overwrite the first
    rgbs = [_write_scene(first, "fog", (32, 64)), _write_scene(second, "night", (40, 72))]
    out = tmp_path / "out" / "nested"
    predictions = predict_images(
        last, [first, str(second)], out, alpha=0.3, test_as=None, progress=False
    )

    model = load_trained(last)
    backbone = model.segmentor.backbone
    assert isinstance(backbone, ViTBackbone)
    transform = evaluation_transform(backbone.mean, backbone.std)
    assert [p.source for p in predictions] == [first, second]
    assert [p.ids.name for p in predictions] == ["street_ids.png", "street-2_ids.png"]
    assert len(list(out.iterdir())) == 8  # ids, label ids, mask, overlay per image
    for prediction, rgb in zip(predictions, rgbs, strict=True):
        height, width = rgb.shape[:2]
        assert prediction.size == (height, width)
        pixels = torch.from_numpy(np.array(Image.open(prediction.source).convert("RGB")))
        pixels = pixels.permute(2, 0, 1)
        normalised, _ = transform(pixels, torch.zeros(height, width, dtype=torch.int64))
        expected_input = backbone.normalize(pixels[None].float() / 255)
        torch.testing.assert_close(normalised[None], expected_input, rtol=0, atol=1e-5)
        scores = model.segmentor.predict(normalised[None], mode="whole")
        expected = scores[0].argmax(0).numpy().astype(np.uint8)

        with Image.open(prediction.ids) as ids_png:
            assert ids_png.mode == "L"
            ids = np.array(ids_png)
        np.testing.assert_array_equal(ids, expected)
        with Image.open(prediction.mask) as mask_png:
            assert mask_png.mode == "RGB"
            np.testing.assert_array_equal(np.array(mask_png), colorize(expected))
        with Image.open(prediction.overlay) as overlay_png:
            np.testing.assert_array_equal(np.array(overlay_png), overlay(rgb, expected, 0.3))
        present = {CITYSCAPES_CLASSES[i] for i in np.unique(expected)}
        assert set(prediction.class_share) == present
        assert sum(prediction.class_share.values()) == pytest.approx(1.0)
        shares = list(prediction.class_share.values())
        assert shares == sorted(shares, reverse=True)
    # by default as the protocol tests an image: resized to its test size, scores resized back
    tested = predict_images(last, [second], tmp_path / "tested", progress=False)[0]
    height, width = rgbs[1].shape[:2]
    pixels = torch.from_numpy(rgbs[1]).permute(2, 0, 1)
    normalised, _ = transform(pixels, torch.zeros(height, width, dtype=torch.int64))
    protocol = model.protocol()
    assert protocol.resized_shape("", height, width) != (height, width)
    scores = protocol_scores(model.segmentor, normalised[None], protocol, "", (height, width))
    with Image.open(tested.ids) as ids_png:
        np.testing.assert_array_equal(np.array(ids_png), scores[0].argmax(0).numpy())


def test_predict_images_validates_every_input_first(tmp_path: Path, last: Path) -> None:
    good = tmp_path / "good.png"
    _write_scene(good, "source", (32, 64))
    missing = tmp_path / "missing.png"
    broken = tmp_path / "broken.png"
    broken.write_text("not an image", encoding="utf-8")
    out = tmp_path / "out"
    with pytest.raises(DatasetError) as caught:
        predict_images(last, [good, missing, broken], out, progress=False)
    assert str(missing) in str(caught.value)
    assert str(broken) in str(caught.value)
    assert str(good) not in str(caught.value)
    assert not out.exists()
    assert predict_images(last, [], out, progress=False) == []


def test_wrong_checkpoints_are_one_line_errors(tmp_path: Path, run_dir: Path, last: Path) -> None:
    """A sensitivity checkpoint and tensors from another backbone, given to evaluate: each a
    ValueError naming the file (the command line prints it as one line)."""
    import shutil

    from fishertune.engine.checkpoint import load_checkpoint, save_checkpoint

    scores = tmp_path / "scores"
    save_checkpoint(scores, "sensitivity", tensors={"score.x": torch.ones(2)}, state={"q": 1})
    with pytest.raises(ValueError, match=r"sensitivity\.json is not a trained model's checkpoint"):
        evaluate_checkpoint(scores / "sensitivity.json")
    other = tmp_path / "other"
    shutil.copytree(run_dir / "checkpoints", other)
    tensors, state = load_checkpoint(other, "last")
    state["config"]["model"]["options"]["embed_dim"] = 48  # the tensors are 32 wide
    save_checkpoint(other, "last", tensors=tensors, state=state)
    with pytest.raises(ValueError, match=r"last\.json: saved tensors do not fit this model"):
        evaluate_checkpoint(other / "last.json")
