"""``fishertune data check`` / ``data convert`` on tiny trees (``tests/data_fixtures.py``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

from data_fixtures import (
    H,
    W,
    build_gtav,
    build_mapillary,
    build_synthia,
    id_pattern,
    write_image,
    write_palette_png,
)
from fishertune.cli import main
from fishertune.data import GTAV, Synthia, build_dataset
from fishertune.data.tools import TRAIN_ID_SUFFIX, check_dataset, convert_dataset

GTAV_IDS = [7, 8, 11, 26, 0, 23]  # road, sidewalk, building, car, unlabeled, sky
SYNTHIA_IDS = [3, 4, 2, 0, 8, 22]  # road, sidewalk, building, void, car, lane marking
MAPILLARY_NAMES = ["construction--flat--road", "nature--sky", "void--unlabeled"]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``fishertune ARGV``: exit status, stdout, stderr."""
    status = main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def read_png(path: Path) -> NDArray[np.int64]:
    """A single-channel PNG as int64 values."""
    with Image.open(path) as image:
        assert image.mode == "L"
        return np.asarray(image).astype(np.int64)


def test_check_clean_tree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build_gtav(tmp_path, GTAV_IDS)
    status, out, err = run(["data", "check", "gtav", str(tmp_path)], capsys)
    assert status == 0
    assert "all: 3 images" in out
    assert "no problems found" in out
    assert "Traceback" not in err


def test_check_counts_every_split_present(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build_mapillary(tmp_path, "validation", MAPILLARY_NAMES, [0, 1, 2])
    build_mapillary(tmp_path, "training", MAPILLARY_NAMES, [0, 1, 2])
    status, out, _ = run(["data", "check", "mapillary", str(tmp_path)], capsys)
    assert status == 0
    assert "validation: 2 images" in out
    assert "training: 2 images" in out
    status, out, _ = run(
        ["data", "check", "mapillary", str(tmp_path), "--split", "training"], capsys
    )
    assert status == 0
    assert "training: 2 images" in out
    assert "validation" not in out


def broken_gtav(root: Path) -> None:
    """Five GTAV samples: one clean, then a missing label, a corrupt image, a size mismatch and
    out-of-table label values (ids 40 and 200 are not Cityscapes label ids)."""
    build_gtav(root, GTAV_IDS, n=5)
    (root / "labels" / "00002.png").unlink()
    (root / "images" / "00003.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    write_image(root / "images" / "00004.png", size=(H + 2, W))
    write_palette_png(root / "labels" / "00005.png", id_pattern([7, 40, 200]))


def test_check_names_every_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken_gtav(tmp_path)
    status, out, err = run(["data", "check", "gtav", str(tmp_path)], capsys)
    assert status == 1
    assert "all: 5 images" in out
    assert "4 problem(s)" in out
    assert "00002.png has no label file" in out
    assert "cannot read image file" in out
    assert "00003.png" in out
    assert "size mismatch" in out
    assert "00004.png" in out
    assert "values [40, 200]" in out
    assert "00005.png" in out
    assert "Traceback" not in err


def test_check_lists_at_most_n_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken_gtav(tmp_path)
    status, out, _ = run(["data", "check", "gtav", str(tmp_path), "--max-problems", "1"], capsys)
    assert status == 1
    assert out.count("  - ") == 1
    assert "... and 3 more" in out


def test_check_shows_progress_on_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build_gtav(tmp_path, GTAV_IDS)
    report = check_dataset("gtav", tmp_path, progress=True)
    assert report.counts == {"all": 3}
    assert report.problems == []
    assert "checking gtav" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["data", "check", "nosuchset", "ROOT"], "unknown dataset 'nosuchset'"),
        (["data", "check", "gtav", "ROOT/missing"], "does not exist"),
        (["data", "check", "gtav", "ROOT", "--split", "train"], "has no split 'train'"),
        (["data", "check", "synthia", "ROOT"], "no synthia images found"),
        (["data", "convert", "nosuchset", "ROOT"], "unknown dataset 'nosuchset'"),
        (["data", "convert", "gtav", "ROOT/missing"], "does not exist"),
        (["data", "convert", "cityscapes", "ROOT"], "converting cityscapes is not supported"),
    ],
)
def test_usage_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    build_gtav(tmp_path, GTAV_IDS)
    status, out, err = run([arg.replace("ROOT", str(tmp_path)) for arg in argv], capsys)
    assert status == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("fishertune data ")
    assert message in err
    assert "Traceback" not in err


@pytest.mark.parametrize("action", ["check", "convert"])
def test_the_generated_benchmark_has_no_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], action: str
) -> None:
    status, out, err = run(["data", action, "synthetic", str(tmp_path)], capsys)
    assert (status, out) == (2, "")
    assert len(err.strip().splitlines()) == 1
    assert "dataset 'synthetic' is generated, not read from files" in err
    assert "gtav" in err


def loader_labels(name: str, root: Path) -> list[NDArray[np.int64]]:
    """The train-id labels the loader returns for every sample, in order."""
    dataset = build_dataset(name, root)
    return [dataset[i][1].numpy() for i in range(len(dataset))]


def test_convert_gtav_writes_loader_train_ids(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build_gtav(tmp_path, GTAV_IDS)
    expected = loader_labels("gtav", tmp_path)
    status, out, _ = run(["data", "convert", "gtav", str(tmp_path), "--workers", "2"], capsys)
    assert status == 0
    assert "3 written, 0 skipped" in out
    outputs = sorted((tmp_path / "labels").glob(f"*{TRAIN_ID_SUFFIX}"))
    assert [path.name for path in outputs] == [f"{i:05d}{TRAIN_ID_SUFFIX}" for i in (1, 2, 3)]
    for path, labels in zip(outputs, expected, strict=True):
        np.testing.assert_array_equal(read_png(path), labels)
    # the loader now reads the converted files, with the same train ids
    converted = GTAV(tmp_path)
    assert all(pair.label.name.endswith(TRAIN_ID_SUFFIX) for pair in converted.pairs)
    for i, labels in enumerate(expected):
        np.testing.assert_array_equal(converted[i][1].numpy(), labels)


def test_convert_synthia_writes_8bit_train_ids(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build_synthia(tmp_path, SYNTHIA_IDS)
    expected = loader_labels("synthia", tmp_path)
    status, out, _ = run(["data", "convert", "synthia", str(tmp_path), "--workers", "1"], capsys)
    assert status == 0
    assert "2 written, 0 skipped" in out
    for i, labels in enumerate(expected):
        path = tmp_path / "GT" / "LABELS" / f"{i:07d}{TRAIN_ID_SUFFIX}"
        np.testing.assert_array_equal(read_png(path), labels)
        assert set(np.unique(labels).tolist()) == {0, 1, 2, 13, 255}
    # the converted files are not mistaken for samples; the loader now reads them
    converted = Synthia(tmp_path)
    assert len(converted) == 2
    assert all(pair.label.name.endswith(TRAIN_ID_SUFFIX) for pair in converted.pairs)
    assert [converted[i][1].numpy().tolist() for i in range(2)] == [
        labels.tolist() for labels in expected
    ]


def test_convert_mapillary_writes_next_to_labels(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build_mapillary(tmp_path, "validation", MAPILLARY_NAMES, [0, 1, 2])
    expected = loader_labels("mapillary", tmp_path)
    status, out, _ = run(["data", "convert", "mapillary", str(tmp_path), "--workers", "1"], capsys)
    assert status == 0
    assert "2 written" in out
    keys = sorted(path.stem for path in (tmp_path / "validation" / "images").glob("*.jpg"))
    for key, labels in zip(keys, expected, strict=True):
        path = tmp_path / "validation" / "labels" / f"{key}{TRAIN_ID_SUFFIX}"
        np.testing.assert_array_equal(read_png(path), labels)
    reloaded = build_dataset("mapillary", tmp_path, "validation")
    assert all(pair.label.name.endswith(TRAIN_ID_SUFFIX) for pair in reloaded.pairs)
    for again, labels in zip(loader_labels("mapillary", tmp_path), expected, strict=True):
        np.testing.assert_array_equal(again, labels)


def test_second_run_skips_everything(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build_gtav(tmp_path, GTAV_IDS)
    assert convert_dataset("gtav", tmp_path, workers=1).written == 3
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "labels").glob(f"*{TRAIN_ID_SUFFIX}")}
    status, out, _ = run(["data", "convert", "gtav", str(tmp_path), "--workers", "1"], capsys)
    assert status == 0
    assert "0 written, 3 skipped" in out
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_interrupted_run_recovers(tmp_path: Path) -> None:
    build_gtav(tmp_path, GTAV_IDS)
    expected = loader_labels("gtav", tmp_path)
    convert_dataset("gtav", tmp_path, workers=1)
    labels = tmp_path / "labels"
    # an interrupted run: 00001 never reached its final name, 00002 was cut short
    first = labels / f"00001{TRAIN_ID_SUFFIX}"
    leftover = labels / f".{first.name}.12345.tmp"
    leftover.write_bytes(first.read_bytes()[:20])
    first.unlink()
    second = labels / f"00002{TRAIN_ID_SUFFIX}"
    second.write_bytes(second.read_bytes()[:40])
    report = convert_dataset("gtav", tmp_path, workers=2, progress=True)
    assert (report.written, report.skipped, report.failed) == (2, 1, [])
    assert not list(labels.glob(".*.tmp"))
    for i, labels_array in enumerate(expected, start=1):
        np.testing.assert_array_equal(read_png(labels / f"{i:05d}{TRAIN_ID_SUFFIX}"), labels_array)


def test_unreadable_source_fails_that_file_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build_gtav(tmp_path, GTAV_IDS)
    (tmp_path / "labels" / "00002.png").write_bytes(b"garbage")
    status, out, err = run(["data", "convert", "gtav", str(tmp_path), "--workers", "1"], capsys)
    assert status == 1
    assert "2 written" in out
    assert "1 failed" in out
    assert "00002.png" in out
    assert not (tmp_path / "labels" / f"00002{TRAIN_ID_SUFFIX}").exists()
    assert "Traceback" not in err


def test_convert_on_a_read_only_file_system_is_one_line_and_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    build_gtav(tmp_path, ids=(7, 26))

    def read_only(image: Image.Image, target: Path, *args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system", str(target))

    monkeypatch.setattr(Image.Image, "save", read_only)
    status = main(["data", "convert", "gtav", str(tmp_path), "--workers", "1"])
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert err.startswith("fishertune data convert: error: Read-only file system: ")
    assert len(err.splitlines()) == 1
    assert not list(tmp_path.rglob("*.tmp"))
    assert not list(tmp_path.rglob(f"*{TRAIN_ID_SUFFIX}"))
