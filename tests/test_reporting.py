"""Reporting: Cityscapes palette, per-block sensitivity tables, plots and the run report."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from PIL import Image
from torch import Tensor

from fishertune.evaluation import (
    AVERAGE_HEADER,
    CITYSCAPES_CLASSES,
    SOURCE_DOMAIN,
    DomainMetrics,
    DomainResults,
    get_protocol,
)
from fishertune.models import parameter_groups
from fishertune.reporting import (
    CITYSCAPES_PALETTE,
    colorize,
    comparison_table,
    domain_bars,
    method_colors,
    moving_average,
    overlay,
    qualitative_grid,
    read_metrics_csv,
    selected_share_by_block,
    sensitivity_by_block,
    sensitivity_heatmap,
    training_curves,
    write_report,
)
from fishertune.reporting import report as report_module

C = 192  # embed_dim of vit_tiny


@pytest.fixture(scope="module")
def vit() -> torch.nn.Module:
    model: torch.nn.Module = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, depth=2, img_size=32
    )
    return model


def assert_png(path: Path, min_width: int = 200, min_height: int = 100) -> None:
    assert path.is_file()
    assert path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width >= min_width
        assert image.height >= min_height


# --- palette -----------------------------------------------------------------------------


def test_palette_has_the_official_cityscapes_colours() -> None:
    assert len(CITYSCAPES_PALETTE) == len(CITYSCAPES_CLASSES) == 19
    named = dict(zip(CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, strict=True))
    assert named["road"] == (128, 64, 128)
    assert named["sky"] == (70, 130, 180)
    assert named["car"] == (0, 0, 142)
    assert named["bicycle"] == (119, 11, 32)
    assert len(set(CITYSCAPES_PALETTE)) == 19


def test_colorize_maps_train_ids_and_ignore_to_black() -> None:
    label = torch.tensor([[0, 255], [13, 18]])
    out = colorize(label)
    assert out.dtype == np.uint8
    assert out.shape == (2, 2, 3)
    assert out[0, 0].tolist() == [128, 64, 128]
    assert out[0, 1].tolist() == [0, 0, 0]
    assert out[1, 0].tolist() == [0, 0, 142]
    assert out[1, 1].tolist() == [119, 11, 32]
    assert np.array_equal(colorize(label.numpy().astype(np.uint8)), out)


@pytest.mark.parametrize("bad", [19, -1, 254])
def test_colorize_rejects_ids_outside_the_classes(bad: int) -> None:
    with pytest.raises(ValueError, match=f"train id {bad}"):
        colorize(np.array([[0, bad]]))


def test_colorize_rejects_wrong_shape_and_dtype() -> None:
    with pytest.raises(ValueError, match="must be"):
        colorize(np.zeros((1, 2, 2), dtype=np.int64))
    with pytest.raises(TypeError, match="integer"):
        colorize(np.zeros((2, 2), dtype=np.float32))


def test_overlay_blends_labelled_pixels_and_keeps_ignored_ones() -> None:
    image = np.array([[[12, 20, 32], [200, 100, 50]]], dtype=np.uint8)
    label = np.array([[0, 255]])
    out = overlay(image, label, alpha=0.25)
    assert out.dtype == np.uint8
    # 0.75 * (12, 20, 32) + 0.25 * (128, 64, 128)
    assert out[0, 0].tolist() == [41, 31, 56]
    assert out[0, 1].tolist() == [200, 100, 50]
    assert overlay(image, label, alpha=1.0)[0, 0].tolist() == [128, 64, 128]
    assert np.array_equal(overlay(image, label, alpha=0.0), image)
    with pytest.raises(ValueError, match="alpha"):
        overlay(image, label, alpha=1.5)
    with pytest.raises(ValueError, match="does not match"):
        overlay(image, np.zeros((2, 2), dtype=np.int64))


# --- per-block tables --------------------------------------------------------------------


def hand_scores(model: torch.nn.Module) -> dict[str, Tensor]:
    """Scores whose per-(block, kind) means are easy to compute by hand."""
    shapes = {name: p.shape for name, p in model.named_parameters()}
    qkv_w = torch.full(shapes["blocks.0.attn.qkv.weight"], -math.inf)
    qkv_w[:C] = 1.0  # Q
    qkv_w[C + C // 2 : 2 * C] = 2.0  # second half of K; first half is -inf
    qkv_b = torch.full(shapes["blocks.0.attn.qkv.bias"], -math.inf)  # V bias: -inf
    qkv_b[:C] = 3.0  # Q bias
    qkv_b[C : 2 * C] = math.nan  # K bias
    scores = {
        "blocks.0.attn.qkv.weight": qkv_w,
        "blocks.0.attn.qkv.bias": qkv_b,
        "blocks.0.attn.proj.weight": torch.full(shapes["blocks.0.attn.proj.weight"], 100.0),
        "blocks.0.mlp.fc1.weight": torch.full(shapes["blocks.0.mlp.fc1.weight"], 1.0),
        "blocks.0.mlp.fc1.bias": torch.full(shapes["blocks.0.mlp.fc1.bias"], 1.0),
        "blocks.0.mlp.fc2.weight": torch.full(shapes["blocks.0.mlp.fc2.weight"], 4.0),
        "blocks.0.mlp.fc2.bias": torch.full(shapes["blocks.0.mlp.fc2.bias"], 4.0),
        # Block 1: only the fused qkv weight, scored 0, 1, 2, ... in row-major order.
        "blocks.1.attn.qkv.weight": torch.arange(3 * C * C, dtype=torch.float32).reshape(3 * C, C),
    }
    return scores


def test_sensitivity_by_block_matches_a_hand_computed_table(vit: torch.nn.Module) -> None:
    groups = parameter_groups(vit)
    table = sensitivity_by_block(hand_scores(vit), groups)
    half = (C * C - 1) / 2  # mean of 0 .. C²-1
    expected = np.array(
        [
            [
                (C * C * 1.0 + C * 3.0) / (C * C + C),  # Q weight rows and Q bias
                2.0,  # -inf rows and the NaN bias left out
                math.nan,  # all -inf
                # FFN1 (4C×C + 4C at 1) pooled with FFN2 (C×4C + C at 4)
                (4 * C * C + 4 * C + 4 * (4 * C * C + C)) / (8 * C * C + 5 * C),
            ],
            [half, C * C + half, 2 * C * C + half, math.nan],
        ]
    )
    assert table.shape == (2, 4)
    np.testing.assert_allclose(table, expected, rtol=1e-6)

    other = sensitivity_by_block(hand_scores(vit), groups, kinds=("O", "FFN1", "FFN2"))
    np.testing.assert_allclose(other, [[100.0, 1.0, 4.0], [math.nan] * 3])
    with pytest.raises(ValueError, match="unknown kind"):
        sensitivity_by_block(hand_scores(vit), groups, kinds=("MLP",))


def test_selected_share_by_block_counts_selected_elements(vit: torch.nn.Module) -> None:
    shapes = {name: p.shape for name, p in vit.named_parameters()}
    qkv = torch.zeros(shapes["blocks.0.attn.qkv.weight"], dtype=torch.bool)
    qkv[:C] = True
    qkv[C : C + 10] = True
    masks = {
        "blocks.0.attn.qkv.weight": qkv,
        "blocks.0.mlp.fc1.weight": torch.zeros(shapes["blocks.0.mlp.fc1.weight"], dtype=torch.bool),
        "blocks.0.mlp.fc2.weight": torch.ones(shapes["blocks.0.mlp.fc2.weight"], dtype=torch.bool),
    }
    share = selected_share_by_block(masks, parameter_groups(vit))
    np.testing.assert_allclose(share, [[1.0, 10 / C, 0.0, 0.5], [math.nan] * 4])
    with pytest.raises(TypeError, match="boolean"):
        selected_share_by_block({"blocks.0.attn.qkv.weight": qkv.float()}, parameter_groups(vit))


# --- plots -------------------------------------------------------------------------------


def test_sensitivity_heatmap_writes_png_with_nan_and_share(
    vit: torch.nn.Module, tmp_path: Path
) -> None:
    groups = parameter_groups(vit)
    table = sensitivity_by_block(hand_scores(vit), groups)
    share = np.array([[1.0, 0.5, math.nan, 0.0], [0.2, 0.1, 0.0, math.nan]])
    path = tmp_path / "deep" / "figs" / "sensitivity.png"
    assert sensitivity_heatmap(table, path, selected_share=share) == path
    assert_png(path)
    linear = sensitivity_heatmap(np.array([[0.0, -1.0, 2.0, 3.0]]), tmp_path / "lin.png", log=False)
    assert_png(linear)
    all_blank = sensitivity_heatmap(np.full((3, 4), math.nan), tmp_path / "nan.png")
    assert_png(all_blank)
    with pytest.raises(ValueError, match="table must be"):
        sensitivity_heatmap(np.zeros((2, 3)), tmp_path / "bad.png")
    with pytest.raises(ValueError, match="selected_share"):
        sensitivity_heatmap(table, tmp_path / "bad.png", selected_share=np.zeros((1, 4)))


def write_metrics(path: Path) -> None:
    fields = ["step", "stage", "loss", "lr", "trainable", "miou/cityscapes", "miou/bdd"]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for step in range(1, 61):
            stage = "warmup" if step <= 20 else "sparse"
            writer.writerow(
                {
                    "step": step,
                    "stage": stage,
                    "loss": 2.0 / step + 0.1 * (step % 3),
                    "lr": 1e-4 * min(1.0, step / 10),
                    "trainable": 1_000_000 if stage == "warmup" else 250_000,
                }
            )
            if step % 20 == 0:
                writer.writerow(
                    {
                        "step": step,
                        "miou/cityscapes": 0.3 + step / 200,
                        "miou/bdd": 0.2 + step / 400,
                    }
                )


def test_read_metrics_csv_parses_numbers_and_omits_empty_cells(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    write_metrics(path)
    rows = read_metrics_csv(path)
    assert len(rows) == 63
    assert rows[0] == {
        "step": 1.0,
        "stage": "warmup",
        "loss": pytest.approx(2.1),
        "lr": pytest.approx(1e-5),
        "trainable": 1_000_000.0,
    }
    evaluation = rows[20]
    assert evaluation == {"step": 20.0, "miou/cityscapes": 0.4, "miou/bdd": 0.25}
    assert all(isinstance(v, float) for row in rows for k, v in row.items() if k != "stage")


def test_moving_average_is_trailing() -> None:
    np.testing.assert_allclose(moving_average([1, 2, 3, 4], 2), [1.0, 1.5, 2.5, 3.5])
    np.testing.assert_allclose(moving_average([1, 2, 3], 10), [1.0, 1.5, 2.0])
    with pytest.raises(ValueError, match="window"):
        moving_average([1.0], 0)


def test_training_curves_writes_png(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    write_metrics(path)
    out = training_curves(read_metrics_csv(path), tmp_path / "plots" / "curves.png")
    assert_png(out, min_height=400)  # four panels
    loss_only = training_curves([{"step": 1, "loss": 1.0}, {"step": 2}], tmp_path / "loss.png")
    assert_png(loss_only)
    with Image.open(out) as four, Image.open(loss_only) as one:
        assert four.height > 2 * one.height
    with pytest.raises(ValueError, match="step"):
        training_curves([{"loss": 1.0}], tmp_path / "x.png")
    with pytest.raises(ValueError, match="nothing to plot"):
        training_curves([{"step": 1.0, "stage": "a"}], tmp_path / "x.png")


def test_qualitative_grid_writes_png(tmp_path: Path) -> None:
    generator = np.random.default_rng(0)
    rows = []
    for domain in ("cityscapes", "bdd", "mapillary"):
        image = generator.integers(0, 256, (16, 32, 3), dtype=np.uint8)
        truth = generator.integers(0, 19, (16, 32))
        truth[:2] = 255
        prediction = torch.from_numpy(generator.integers(0, 19, (16, 32)))
        rows.append((domain, image, truth, prediction))
    out = qualitative_grid(rows, tmp_path / "grid.png")
    assert_png(out, min_width=300, min_height=300)
    with pytest.raises(ValueError, match="differs from image"):
        qualitative_grid([("x", rows[0][1], np.zeros((8, 8), dtype=np.int64), rows[0][3])], out)
    with pytest.raises(ValueError, match="at least one row"):
        qualitative_grid([], out)


@pytest.mark.parametrize("count", [1, 10, 11, 20])
def test_methods_side_by_side_get_distinct_colours(count: int) -> None:
    colors = method_colors(count)
    assert len(colors) == count
    assert len(set(colors)) == count


def test_domain_bars_writes_png(tmp_path: Path) -> None:
    results = {
        "Rein": {"cityscapes": 0.66, "bdd": 0.60, "mapillary": 0.66},
        "FisherTune": {"cityscapes": 0.68, "bdd": math.nan, "mapillary": 0.68},
    }
    out = domain_bars(results, tmp_path / "bars.png", title="GTAV → real")
    assert_png(out)
    with pytest.raises(ValueError, match="at least one"):
        domain_bars({}, tmp_path / "empty.png")


# --- report ------------------------------------------------------------------------------


def domain_results(method: str, mious: dict[str, float]) -> DomainResults:
    domains = {
        name: DomainMetrics(
            iou=(miou,) * len(CITYSCAPES_CLASSES), miou=miou, pixel_acc=0.9, test_size=(64, 32)
        )
        for name, miou in mious.items()
    }
    return DomainResults(method, get_protocol("rein"), CITYSCAPES_CLASSES, domains)


def test_train_and_the_comparison_print_one_target_average() -> None:
    """``fishertune train``'s table, results.json, the report's summary and the demo's and
    compare's Table 1 give the same "Avg. (targets)": the targets' mean, the source left out."""
    results = domain_results("m", {SOURCE_DOMAIN: 0.9, "fog": 0.4, "night": 0.55})
    assert results.target_average == pytest.approx(0.475)
    assert results.to_dict()["target_average_miou"] == pytest.approx(0.475)
    train_header, _, train_row = results.domain_table().splitlines()
    assert train_header.endswith(f"| {AVERAGE_HEADER} |")
    assert train_row.endswith("| 47.50 |")
    compare_row = comparison_table({"m": results}, SOURCE_DOMAIN).splitlines()[2]
    assert compare_row.endswith("| 47.50 |")
    assert math.isnan(domain_results("m", {SOURCE_DOMAIN: 0.9}).target_average)


def test_write_report_sections_tables_links_and_yaml(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    results = domain_results("fishertune", {"bdd": 0.4, "cityscapes": 0.9, "mapillary": 0.5})
    config = {"model": {"backbone": "vit_tiny", "out_indices": (0, 1)}, "lr": 1e-4, "seed": 3}
    figures = {
        "Training curves": run_dir / "figures" / "curves.png",
        "Elsewhere": tmp_path / "shared" / "bars.png",
    }
    path = write_report(
        run_dir,
        title="FisherTune on GTAV",
        config=config,
        results=results,
        source_domain="cityscapes",
        figures=figures,
        notes=["first note", "second note"],
        extra_tables={"Parameters": "| kind | count |\n| --- | ---: |\n| Q | 10 |"},
    )
    assert path == run_dir / "report.md"
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# FisherTune on GTAV\n")
    header = f"| Method | cityscapes (source) | bdd | mapillary | {AVERAGE_HEADER} |"
    assert header in text
    assert "| fishertune | 90.00 | 40.00 | 50.00 | 45.00 |" in text  # avg over targets only
    assert "unseen target domain(s) only" in text
    assert results.class_table() in text
    assert "![Training curves](figures/curves.png)" in text
    assert "![Elsewhere](../shared/bars.png)" in text
    assert "- first note\n- second note" in text
    assert "## Parameters\n\n| kind | count |" in text
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert yaml.safe_load(block) == {
        "model": {"backbone": "vit_tiny", "out_indices": [0, 1]},
        "lr": 1e-4,
        "seed": 3,
    }
    assert block.index("model") < block.index("lr") < block.index("seed")  # not sorted
    sections = ["## Results", "## Parameters", "## Figures", "## Notes", "## Configuration"]
    positions = [text.index(s) for s in sections]
    assert positions == sorted(positions)
    assert sorted(p.name for p in run_dir.iterdir()) == ["report.md"]  # no temporary left


def test_write_report_leaves_out_missing_pieces(tmp_path: Path) -> None:
    path = write_report(
        tmp_path, title="Empty", config={}, results=None, source_domain=None, figures={}
    )
    text = path.read_text(encoding="utf-8")
    assert "## Configuration" in text
    for absent in ("## Results", "## Figures", "## Notes"):
        assert absent not in text


def test_write_report_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "report.md").write_text("old\n", encoding="utf-8")

    def failing_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(report_module.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_report(
            tmp_path, title="New", config={"a": 1}, results=None, source_domain=None, figures={}
        )
    assert (tmp_path / "report.md").read_text(encoding="utf-8") == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_comparison_table_bolds_column_maxima_and_averages_targets_only() -> None:
    table = comparison_table(
        {
            "Rein": domain_results("Rein", {"cityscapes": 0.9, "bdd": 0.4, "mapillary": 0.5}),
            "FisherTune": domain_results(
                "FisherTune", {"cityscapes": 0.6, "bdd": 0.45, "mapillary": 0.55}
            ),
            "Partial": domain_results("Partial", {"bdd": 0.3, "cityscapes": math.nan}),
        },
        source_domain="cityscapes",
    )
    lines = table.splitlines()
    assert lines[0] == f"| Method | cityscapes (source) | bdd | mapillary | {AVERAGE_HEADER} |"
    assert lines[1] == "| --- | ---: | ---: | ---: | ---: |"
    assert lines[2] == "| Rein | **90.00** | 40.00 | 50.00 | 45.00 |"  # not (90+40+50)/3 = 60
    assert lines[3] == "| FisherTune | 60.00 | **45.00** | **55.00** | **50.00** |"
    assert lines[4] == "| Partial | - | 30.00 | - | - |"
    single = comparison_table({"Rein": domain_results("Rein", {"a": 0.5, "b": 0.7})}, None)
    assert single.splitlines()[2] == "| Rein | 50.00 | 70.00 | 60.00 |"


def test_study_figures_show_the_numbers_the_verdicts_come_from(tmp_path: Path) -> None:
    """The forest panel plots each paired difference of the committed study at its mean with
    its 95% half-width around a zero line, the claims coloured by verdict; the per-arm panel's
    axis spans the values (not 0) and marks FisherTune; every figure is drawn."""
    import json

    from matplotlib.figure import Figure

    from fishertune.evaluation.domains import AVERAGE_HEADER
    from fishertune.evaluation.intervals import Interval
    from fishertune.reporting.study_figures import (
        VERDICT_COLOURS,
        arm_panel,
        draw_figures,
        forest_panel,
    )

    root = Path(__file__).resolve().parents[1] / "docs" / "study"
    study = json.loads((root / "study.json").read_text(encoding="utf-8"))
    part = study["parts"]["table1"]
    ax = Figure().subplots()
    forest_panel(ax, part, AVERAGE_HEADER)
    plotted = [line.get_xdata()[0] for line in ax.lines if line.get_marker() in ("o", "s")]
    wanted = [100 * Interval.from_dict(p["difference"][AVERAGE_HEADER]).mean for p in part["pairs"]]
    assert plotted == pytest.approx(wanted)
    assert any(list(line.get_xdata()) == [0.0, 0.0] for line in ax.lines)  # the zero line
    colours = {line.get_color() for line in ax.lines}
    assert VERDICT_COLOURS["supported"] in colours
    assert VERDICT_COLOURS["contradicted"] in colours
    arms = {
        label: Interval.from_dict(a["mean"][AVERAGE_HEADER]) for label, a in part["arms"].items()
    }
    ax = Figure().subplots()
    arm_panel(ax, arms, xlabel="target average")
    assert ax.get_xlim()[0] > 40  # the axis spans the values, not 0
    marked = [t.get_text() for t in ax.get_yticklabels() if t.get_fontweight() == "bold"]
    assert marked == ["FisherTune"]
    paths = draw_figures(study, tmp_path / "figures")
    assert set(paths) == {*study["parts"], "sensitivity"}
    for path in paths.values():
        assert (tmp_path / path).is_file()
