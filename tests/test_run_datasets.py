"""The run's data sets and protocol from names, roots and counts (fishertune.engine.domain_sets,
fishertune.engine.sharded_eval.eval_protocol)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from data_fixtures import build_cityscapes, build_gtav
from fishertune.data.cityscapes import Cityscapes
from fishertune.data.registry import open_dataset
from fishertune.data.synthetic import SyntheticSettings, SyntheticStreets
from fishertune.engine.config import load_config
from fishertune.engine.domain_sets import (
    SOURCE_DOMAIN,
    evaluation_set,
    evaluation_sets,
    held_out_count,
    source_train_set,
    source_val_set,
    target_sets,
    unknown_label_notice,
)
from fishertune.engine.sharded_eval import eval_protocol
from fishertune.evaluation.protocols import get_protocol

SMALL = SyntheticSettings(size=(32, 64), seed=2)


def test_the_benchmark_gives_its_source_and_styles() -> None:
    train = source_train_set("synthetic", None, limit=6, synthetic=SMALL)
    assert isinstance(train, SyntheticStreets)
    assert (train.split, train.style, train.size, train.seed, len(train)) == (
        "train",
        "source",
        (32, 64),
        2,
        6,
    )
    sets = evaluation_sets("synthetic", None, ["night", "fog"], {}, limit=3, synthetic=SMALL)
    assert list(sets) == [SOURCE_DOMAIN, "night", "fog"]
    for style, dataset in zip(("source", "night", "fog"), sets.values(), strict=True):
        assert isinstance(dataset, SyntheticStreets)
        assert (dataset.split, dataset.style, len(dataset)) == ("val", style, 3)


def test_files_need_their_roots_named_by_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^data\.root: the source dataset 'gtav' needs its root"):
        source_train_set("gtav", None, limit=None, synthetic=SMALL)
    # GTAV evaluates on its training split: no validation set, and its root is not needed
    assert source_val_set("gtav", None, limit=None, synthetic=SMALL) is None
    with pytest.raises(ValueError, match=r"^data\.roots\.bdd100k: the target dataset 'bdd100k'"):
        target_sets("gtav", ["bdd100k"], {}, limit=None, synthetic=SMALL)


def test_a_data_set_evaluates_on_its_declared_split(tmp_path: Path) -> None:
    build_cityscapes(tmp_path, "val", [0, 1, 255], "labelTrainIds")
    whole = evaluation_set("cityscapes", root=str(tmp_path))
    assert isinstance(whole, Cityscapes)
    assert (whole.split, len(whole)) == ("val", 3)
    assert len(evaluation_set("cityscapes", root=str(tmp_path), limit=2)) == 2
    sets = evaluation_sets(
        "cityscapes",
        str(tmp_path),
        ["cityscapes"],
        {"cityscapes": str(tmp_path)},
        limit=1,
        synthetic=SMALL,
    )
    assert {name: len(dataset) for name, dataset in sets.items()} == {
        SOURCE_DOMAIN: 1,
        "cityscapes": 1,
    }


def test_a_run_on_the_benchmark_tests_at_its_image_size() -> None:
    rein = eval_protocol("rein", "whole", source="synthetic", synthetic=SMALL)
    assert (rein.name, rein.mode, rein.default_size) == ("rein", "whole", (64, 32))
    assert rein.size_for("fog") == (64, 32)
    assert rein.size_for("cityscapes") == (1024, 512)
    real = eval_protocol("fullres", "slide", source="gtav", synthetic=SMALL)
    assert real == get_protocol("fullres")
    with pytest.raises(ValueError, match="unknown evaluation protocol 'nope'"):
        eval_protocol("nope", "slide", source="gtav", synthetic=SMALL)


def test_a_training_set_with_many_unknown_label_ids_is_warned_about(tmp_path: Path) -> None:
    """Labels whose ids the data set's table does not define train as ignored: said at once."""
    clean, wrong = tmp_path / "clean", tmp_path / "wrong"
    build_gtav(clean, [7, 8, 11, 26], n=4)
    build_gtav(wrong, [7, 250, 251, 252], n=4)  # three quarters unknown to GTAV's table
    assert unknown_label_notice(open_dataset("gtav", "all", root=clean), "gtav") is None
    notice = unknown_label_notice(open_dataset("gtav", "all", root=wrong, limit=2), "gtav")
    assert notice is not None
    assert re.match(r"7\d\.\d% of the label pixels in a sample of gtav's training labels", notice)
    assert "fishertune data check gtav ROOT" in notice
    assert unknown_label_notice(open_dataset("synthetic", "train", limit=2), "synthetic") is None


def test_a_source_without_validation_split_can_hold_out_a_share(tmp_path: Path) -> None:
    """GTAV declares no validation split: data.val_share holds out its last images for `best`,
    never trained on; 0 keeps them all for training (and the run says it keeps `last` only)."""
    build_gtav(tmp_path, [7, 8, 11, 26], n=10)
    root = str(tmp_path)
    train = source_train_set("gtav", root, limit=None, synthetic=SMALL, val_share=0.2)
    val = source_val_set("gtav", root, limit=None, synthetic=SMALL, val_share=0.2)
    assert val is not None
    assert list(train.indices) == list(range(8))  # type: ignore[attr-defined]
    assert list(val.indices) == [8, 9]  # type: ignore[attr-defined]
    limited = source_train_set("gtav", root, limit=3, synthetic=SMALL, val_share=0.2)
    assert list(limited.indices) == [0, 1, 2]  # type: ignore[attr-defined]
    assert held_out_count(10, 0.01) == 1
    sets = evaluation_sets("gtav", root, [], {}, limit=None, synthetic=SMALL, val_share=0.2)
    assert list(sets) == [SOURCE_DOMAIN]
    with pytest.raises(ValueError, match="leaves none to train on"):
        held_out_count(1, 0.5)
    with pytest.raises(ValueError, match=r"data\.val_share: 'synthetic' has its own validation"):
        load_config(overrides=["data.source=synthetic", "data.targets=[fog]", "data.val_share=0.1"])
    with pytest.raises(ValueError, match=r"data\.val_share: expected a share in \[0, 1\)"):
        load_config(overrides=["data.val_share=1.5"])
