"""Selection diagnostics: budget shares per block × kind, Gini, empty tensors, weight change."""

from __future__ import annotations

import itertools
import json
import math
import re
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from conftest import ViTSegmenter
from fishertune.engine.trainer import Trainer
from fishertune.models.parameter_groups import CANDIDATE_KINDS, ParameterGroup, parameter_groups
from fishertune.reporting import selection_figure, selection_tables
from fishertune.selection import Selection
from fishertune.tuners import available_tuners, build_tuner
from fishertune.tuners.selection_diagnostics import (
    TuningDiagnostics,
    selection_diagnostics,
    tuning_diagnostics,
    weighted_gini,
)
from fishertune.workflows.training import report_run
from run_fixtures import tiny_config
from tuner_harness import prepared, tiny_segmentor, train_steps

# --- Gini ----------------------------------------------------------------------------------


def pairwise_gini(values: list[float], weights: list[float]) -> float:
    """Σ_i Σ_j w_i w_j |x_i − x_j| / (2 W² μ), by a double loop."""
    total = sum(weights)
    mean = sum(w * x for x, w in zip(values, weights, strict=True)) / total
    spread = sum(
        wi * wj * abs(xi - xj)
        for (xi, wi), (xj, wj) in itertools.product(zip(values, weights, strict=True), repeat=2)
    )
    return spread / (2 * total**2 * mean)


def test_weighted_gini_matches_hand_computations() -> None:
    # fractions 0.5, 1, 0 of tensors of 4, 2, 2 elements: pairs 8 + 8 + 8 = 24 over 2·64·0.5
    assert weighted_gini([0.5, 1.0, 0.0], [4, 2, 2]) == pytest.approx(0.375, abs=1e-15)
    # the whole budget in one tensor of 2 of 4 elements: 1 − 2/4
    assert weighted_gini([0.0, 0.0, 1.0], [1, 1, 2]) == pytest.approx(0.5, abs=1e-15)
    assert weighted_gini([0.3, 0.3, 0.3], [5, 1, 7]) == pytest.approx(0.0, abs=1e-15)
    assert math.isnan(weighted_gini([0.0, 0.0], [3, 4]))
    with pytest.raises(ValueError, match="positive"):
        weighted_gini([0.1, 0.2], [1, 0])


def test_weighted_gini_matches_the_pairwise_formula_and_the_expanded_population() -> None:
    g = torch.Generator().manual_seed(3)
    for size in (1, 2, 5, 17):
        values = torch.rand(size, generator=g, dtype=torch.float64)
        values[: size // 3] = 0.0  # empty tensors
        weights = torch.randint(1, 9, (size,), generator=g)
        ours = weighted_gini(values.tolist(), weights.tolist())
        assert ours == pytest.approx(pairwise_gini(values.tolist(), weights.tolist()), rel=1e-12)
        # value x_i repeated w_i times, unweighted
        expanded = values.repeat_interleave(weights).tolist()
        assert ours == pytest.approx(pairwise_gini(expanded, [1.0] * len(expanded)), rel=1e-12)


# --- selection diagnostics on a 2-block ViT with fused qkv (32 channels, FFN 128) ---------


@pytest.fixture(scope="module")
def vit() -> nn.Module:
    torch.manual_seed(0)
    backbone: nn.Module = ViTSegmenter().backbone
    return backbone


def _groups(vit: nn.Module, kinds: tuple[str, ...] = CANDIDATE_KINDS) -> list[ParameterGroup]:
    return [g for g in parameter_groups(vit) if g.kind in kinds]


def _selection(
    vit: nn.Module, groups: list[ParameterGroup], chosen: dict[str, list[int]]
) -> Selection:
    shapes = {
        n: p.shape for n, p in vit.named_parameters() if n in {g.name for g in groups} | set(chosen)
    }
    return Selection(
        {n: torch.tensor(sorted(chosen.get(n, [])), dtype=torch.int64) for n in shapes}, shapes
    )


HAND = {
    # qkv.weight (96, 32): rows 0-31 Q, 32-63 K, 64-95 V; flat index = row · 32 + column
    "blocks.0.attn.qkv.weight": [0, 5, 1 * 32 + 3, 32 * 32 + 1, 40 * 32, 95 * 32 + 31],
    "blocks.0.attn.qkv.bias": [10, 70],  # Q, V
    "blocks.1.mlp.fc1.weight": [0, 1, 2, 3],  # FFN1
    "blocks.1.mlp.fc2.bias": [7, 9],  # FFN2
}


def test_shares_per_block_and_kind_are_the_hand_counts(vit: nn.Module) -> None:
    groups = _groups(vit)
    result = selection_diagnostics(_selection(vit, groups, HAND), groups)
    assert result.selected == 14
    assert result.candidates == 2 * (96 * 32 + 96 + 128 * 32 + 128 + 32 * 128 + 32)
    assert result.kinds == ("Q", "K", "V", "FFN")
    assert result.blocks == [0, 1]
    expected = {(0, "Q"): 4, (0, "K"): 2, (0, "V"): 2, (0, "FFN"): 0}
    expected |= {(1, "Q"): 0, (1, "K"): 0, (1, "V"): 0, (1, "FFN"): 6}
    assert dict(result.counts) == expected
    assert result.share(0, "Q") == pytest.approx(4 / 14)
    assert result.share_by_block() == pytest.approx({0: 8 / 14, 1: 6 / 14})
    assert result.share_by_kind() == pytest.approx(
        {"Q": 4 / 14, "K": 2 / 14, "V": 2 / 14, "FFN": 6 / 14}
    )
    # 12 candidate tensors (qkv, fc1, fc2 weights and biases of 2 blocks), 4 hold a selection
    assert result.tensors == 12
    assert result.empty == (
        "blocks.0.mlp.fc1.weight",
        "blocks.0.mlp.fc1.bias",
        "blocks.0.mlp.fc2.weight",
        "blocks.0.mlp.fc2.bias",
        "blocks.1.attn.qkv.weight",
        "blocks.1.attn.qkv.bias",
        "blocks.1.mlp.fc1.bias",
        "blocks.1.mlp.fc2.weight",
    )
    sizes = {n: p.numel() for n, p in vit.named_parameters() if n in {g.name for g in groups}}
    fractions = [len(HAND.get(n, [])) / size for n, size in sizes.items()]
    assert result.gini == pytest.approx(pairwise_gini(fractions, list(sizes.values())), rel=1e-12)
    record = json.loads(json.dumps(result.to_dict()))
    assert record["empty_tensors"] == list(result.empty)
    assert {(c["block"], c["kind"]): c["selected"] for c in record["cells"]} == expected
    tables = selection_tables(TuningDiagnostics(result, None))
    assert "| 0 | 28.57 | 14.29 | 14.29 | 0.00 | 57.14 |" in tables["Selection"]
    assert "| All | 28.57 | 14.29 | 14.29 | 42.86 | 100.00 |" in tables["Selection"]
    assert "8 of 12: `blocks.0.mlp.fc1.weight`" in tables["Selection"]


def test_fractions_count_candidate_elements_only_and_refuse_others(vit: nn.Module) -> None:
    groups = _groups(vit, ("Q",))  # a third of each qkv tensor: 32 × 32 weights, 32 biases
    chosen = {"blocks.0.attn.qkv.weight": [0, 5, 33]}
    result = selection_diagnostics(_selection(vit, groups, chosen), groups)
    assert result.candidates == 2 * (32 * 32 + 32)
    assert result.tensors == 4
    assert len(result.empty) == 3
    # all of the budget in one tensor of 1024 of the 2112 candidates: G = 1 − 1024 / 2112
    assert result.gini == pytest.approx(1 - 1024 / 2112, rel=1e-12)
    with pytest.raises(ValueError, match="outside the candidate groups"):  # a K row
        selection_diagnostics(
            _selection(vit, groups, {"blocks.0.attn.qkv.weight": [32 * 32]}), groups
        )
    with pytest.raises(ValueError, match="non-candidate"):
        selection_diagnostics(_selection(vit, groups, {"blocks.0.attn.proj.weight": [0]}), groups)


def test_other_kinds_and_elements_outside_blocks_get_their_own_column_and_row(
    vit: nn.Module,
) -> None:
    groups = _groups(vit, ("Q", "O", "other"))
    chosen = {
        "blocks.1.attn.proj.weight": [0, 1, 2],
        "pos_embed": [4],
        "blocks.0.attn.qkv.bias": [0],
    }
    result = selection_diagnostics(_selection(vit, groups, chosen), groups)
    assert result.kinds == ("Q", "K", "V", "FFN", "O", "other")
    assert result.blocks[-1] is None
    assert result.share(1, "O") == pytest.approx(3 / 5)
    assert result.share_by_block()[None] == pytest.approx(1 / 5)
    assert result.share_by_kind() == pytest.approx(
        {"Q": 0.2, "K": 0, "V": 0, "FFN": 0, "O": 0.6, "other": 0.2}
    )


# --- weight change -------------------------------------------------------------------------

_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


def flat(norms: dict[int | None, tuple[float, float]]) -> dict[tuple[int | None, int], float]:
    """For pytest.approx: {(block, 0): change, (block, 1): pretrained}."""
    return {(block, i): pair[i] for block, pair in norms.items() for i in (0, 1)}


def direct_change(
    before: dict[str, Tensor], after: dict[str, Tensor]
) -> dict[int | None, tuple[float, float]]:
    """(‖θ_end − θ_pre‖, ‖θ_pre‖) per block from the names, over all the block's tensors."""
    deltas: dict[int | None, list[Tensor]] = {}
    starts: dict[int | None, list[Tensor]] = {}
    for name, start in before.items():
        found = _BLOCK.search(name)
        block = None if found is None else int(found.group(1))
        deltas.setdefault(block, []).append((after[name].double() - start.double()).flatten())
        starts.setdefault(block, []).append(start.double().flatten())
    return {
        block: (float(torch.cat(deltas[block]).norm()), float(torch.cat(starts[block]).norm()))
        for block in deltas
    }


FAST = {"fishertune": {"estimator": "diagonal"}}
"""Options keeping a method's estimation stage short (the diagnostics do not depend on it)."""


@pytest.mark.parametrize("name", available_tuners())
def test_every_method_reports_its_exact_weight_change_and_its_selection(name: str) -> None:
    model = tiny_segmentor()
    tuner = build_tuner(name, model, **FAST.get(name, {}))
    tuner.keep_pretrained()
    added = {n.removeprefix("backbone.") for n in tuner.added_parameter_names()}
    before = {n: p.detach().clone() for n, p in model.backbone.named_parameters() if n not in added}
    train_steps(prepared(tuner), steps=3)
    after = {n: p.detach() for n, p in model.backbone.named_parameters()}
    result = tuning_diagnostics(tuner)
    if result.weight_change is None:  # only methods that leave the backbone's weights alone
        assert all(torch.equal(after[n], value) for n, value in before.items()), name
    else:
        expected = direct_change(before, after)
        got = {c.block: (c.change, c.pretrained) for c in result.weight_change}
        assert list(got) == [0, 1, 2, 3, None]
        assert flat(got) == pytest.approx(flat(expected), rel=1e-9)
        assert any(change > 0 for change, _ in got.values())
    selection = tuner.selected()
    assert (result.selection is None) == (selection is None)
    if result.selection is not None and selection is not None:
        assert result.selection.selected == selection.count
        assert math.fsum(result.selection.share_by_block().values()) == pytest.approx(1.0)


def test_a_sparse_tuner_without_keep_pretrained_reports_no_weight_change() -> None:
    tuner = build_tuner("random", tiny_segmentor())
    train_steps(tuner, steps=1)
    assert tuning_diagnostics(tuner).weight_change is None
    with pytest.raises(RuntimeError, match="before the selection"):
        tuner.keep_pretrained()


# --- in a run: summary.json, report.md, figure ---------------------------------------------


@pytest.mark.parametrize("method", ["random", "full", "freeze"])
def test_a_run_writes_its_diagnostics_and_resuming_it_finds_the_same(
    method: str, tmp_path: Path
) -> None:
    config = tiny_config(tmp_path / "run", method, ["schedule.eval_every=0"])
    trainer = Trainer(config, progress=False)
    with pytest.raises(RuntimeError, match="once run"):
        trainer.diagnostics_record()
    before = {n: p.detach().clone() for n, p in trainer.segmentor.backbone.named_parameters()}
    result = trainer.run()
    after = {n: p.detach() for n, p in trainer.segmentor.backbone.named_parameters()}
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["selection"] == trainer.diagnostics_record()["selection"]
    if method == "freeze":
        assert summary["weight_change"] is None
    else:
        rows = {
            r["block"]: (r["change_norm"], r["pretrained_norm"]) for r in summary["weight_change"]
        }
        assert flat(rows) == pytest.approx(flat(direct_change(before, after)), rel=1e-9)
        for row in summary["weight_change"]:
            assert row["relative"] == pytest.approx(row["change_norm"] / row["pretrained_norm"])
    if method == "random":
        selection = summary["selection"]
        assert selection["selected"] == result.trainable.backbone > 0
        assert math.fsum(c["share"] for c in selection["cells"]) == pytest.approx(1.0)
        assert len(selection["empty_tensors"]) < selection["candidate_tensors"]
    else:
        assert summary["selection"] is None

    report = report_run(trainer, result).read_text()
    figure = tmp_path / "run" / "figures" / "selection.png"
    assert ("## Selection\n" in report) == (method == "random")
    assert ("## Weight change per block\n" in report) == (method != "freeze")
    assert figure.is_file() == ("figures/selection.png" in report) == (method != "freeze")

    # a resumed finished run rebuilds the pretrained values (fresh weights + checkpoint)
    again = Trainer(config, progress=False)
    again.run(resume=True)
    assert again.diagnostics_record() == {k: summary[k] for k in ("selection", "weight_change")}


def test_the_figure_draws_each_part_it_has(vit: nn.Module, tmp_path: Path) -> None:
    groups = _groups(vit)
    selection = selection_diagnostics(_selection(vit, groups, HAND), groups)
    assert selection_figure(TuningDiagnostics(None, None), tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
    path = selection_figure(TuningDiagnostics(selection, None), tmp_path / "one.png")
    assert path is not None
    assert path.stat().st_size > 0
