"""`fishertune study`: its parts and claims, the verdict arithmetic, the quick study end to end
and a kill at a random moment followed by --resume."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fishertune.cli import main
from fishertune.evaluation.intervals import (
    CONTRADICTED,
    NOT_RESOLVED,
    SUPPORTED,
    Interval,
    combined_verdict,
    paired_interval,
    verdict,
)
from fishertune.reporting.study_report import (
    fill_blocks,
    part_block,
    render_markdown,
    verdict_table,
)
from fishertune.tuners import available_tuners
from fishertune.tuners.registry import tuner_class
from fishertune.workflows.grid import RECORD
from fishertune.workflows.study import study_config
from fishertune.workflows.study_parts import PARTS, Arm, Claim, Part, part_names
from fishertune.workflows.training import method_config

REPO = Path(__file__).resolve().parents[1]


def test_every_arm_is_a_registered_method_with_valid_options() -> None:
    config = study_config(quick=True)
    for part in PARTS:
        for arm in part.arms:
            assert arm.method in available_tuners(), (part.name, arm)
            run = method_config(config, arm.method, Path("run"), 0, dict(arm.options))
            options = run.method.options
            names = {f.name for f in dataclasses.fields(tuner_class(arm.method).config_class)}
            assert set(options) <= names, (part.name, arm.label, set(options) - names)
            tuner_class(arm.method).config_class(**options)  # raises on a bad value


def test_arms_shared_by_parts_are_one_run_and_different_arms_are_not() -> None:
    config = study_config()
    name, options = config.method.name, config.method.options
    keys = {p.name: {a.label: a.key(name, options) for a in p.arms} for p in PARTS}
    fishertune = keys["table1"]["FisherTune"]
    assert fishertune == "fishertune"
    assert keys["budget"]["5%"] == fishertune == keys["capacity"]["FisherTune"]
    assert keys["perturbation"]["FisherTune"] == fishertune
    assert keys["scores"]["DRF"] == keys["estimator"]["DRF stable"]
    assert keys["scores"]["F"] == keys["estimator"]["F stable"]
    assert keys["scores"]["Random"] == keys["table1"]["Random"] == "random"
    assert keys["budget"]["1%"] == "fishertune-fraction=0.01-min_fraction=0.002"
    assert keys["perturbation"]["Rein + FP"] == "rein-train_perturbation=true"
    for part in keys.values():
        assert len(set(part.values())) == len(part)  # no two arms of a part are one run
    selection = keys["selection"]
    assert selection["F"] == keys["scores"]["F"]
    assert selection["DRF normalised"] == keys["scores"]["DRF"]
    assert selection["ΔF"] == keys["scores"]["ΔF"]
    assert selection["F shuffled"] == "fishertune-allocation=shuffled-schedule=constant-variant=F"
    assert selection["DRF paper"] == "fishertune-combine=paper-schedule=constant"
    assert selection["Full"] == "full"
    assert selection["FisherTune"] == fishertune  # table1's arm, with the new defaults
    distinct = {key for part in keys.values() for key in part.values()}
    assert len(distinct) == 32


def test_a_part_refuses_unknown_arms_and_repeated_labels() -> None:
    arm = Arm("A", "full")
    with pytest.raises(ValueError, match="unknown arms"):
        Part("p", "x", "c", (arm,), (("A", "B"),), ())
    with pytest.raises(ValueError, match="repeat"):
        Part("p", "x", "c", (arm, arm), (), ())
    with pytest.raises(ValueError, match="metric"):
        Claim("A", "B", metric="accuracy")


def test_verdicts_follow_the_interval_and_the_direction() -> None:
    # Differences per seed 1, 2, 3: mean 2, s = 1, t(0.975, 2) = 4.3027: half-width 2.484.
    wide = paired_interval([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    assert wide.mean == pytest.approx(2.0)
    assert wide.half_width == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    assert verdict(wide, higher=True) == NOT_RESOLVED
    narrow = paired_interval([1.0, 1.1, 1.2], [0.0, 0.0, 0.0])
    assert verdict(narrow, higher=True) == SUPPORTED
    assert verdict(narrow, higher=False) == CONTRADICTED
    below = Interval(-0.5, 0.2, 3)
    assert verdict(below, higher=False) == SUPPORTED
    assert combined_verdict([SUPPORTED, SUPPORTED]) == SUPPORTED
    assert combined_verdict([SUPPORTED, NOT_RESOLVED]) == NOT_RESOLVED
    assert combined_verdict([SUPPORTED, CONTRADICTED]) == CONTRADICTED
    assert combined_verdict([]) == NOT_RESOLVED


def _interval(mean: float, half: float | None) -> dict[str, Any]:
    return {"mean": mean, "half_width": half, "count": 3}


def _record() -> dict[str, Any]:
    """A hand-made study record with one part."""
    columns = ["source", "fog", "Avg. (targets)", "train loss"]
    arm = {
        "key": "full",
        "method": "full",
        "options": {},
        "trainable": 1234567,
        "seeds": {},
        "mean": {c: _interval(0.5, 0.01) for c in columns},
        "quality": {},
    }
    record = {
        "settings": {},
        "seeds": [0, 1, 2],
        "parts": {
            "capacity": {
                "paper": "Rein, Fig. 5",
                "claim": "less is more",
                "verdict": SUPPORTED,
                "figure": "capacity",
                "groups": [],
                "arms": {"Full": arm, "Rein": {**arm, "trainable": 10}},
                "pairs": [
                    {
                        "arm": "Rein",
                        "reference": "Full",
                        "difference": {c: _interval(0.02, 0.01) for c in columns},
                    }
                ],
                "claims": [
                    {
                        "claim": "Rein > Full (target average)",
                        "column": "Avg. (targets)",
                        "higher": True,
                        "difference": _interval(0.02, 0.01),
                        "verdict": SUPPORTED,
                    }
                ],
            }
        },
    }
    return record


def test_the_markdown_is_rendered_from_the_record_alone() -> None:
    record = _record()
    text = render_markdown(record, {"capacity": "figures/capacity.png"})
    assert "| capacity | Rein, Fig. 5 | less is more | supported |" in text
    assert "- Rein > Full (target average): difference 2.00 ± 1.00 → supported" in text
    assert "| Full | 1,234,567 | 50.00 ± 1.00 | 50.00 ± 1.00 | 50.00 ± 1.00 | 0.500 ± 0.010 |" in (
        text
    )
    assert "| Rein − Full | 2.00 ± 1.00 * | 2.00 ± 1.00 * | 2.00 ± 1.00 * | 0.020 ± 0.010 * |" in (
        text
    )
    assert "![capacity](figures/capacity.png)" in text


def test_document_blocks_are_refilled_from_the_record() -> None:
    record = _record()
    stale = (
        "intro\n<!-- study:verdicts -->\nold\n<!-- /study:verdicts -->\nmiddle\n"
        "<!-- study:capacity -->\nold table\n<!-- /study:capacity -->\nend\n"
    )
    filled = fill_blocks(stale, record)
    assert filled == (
        f"intro\n<!-- study:verdicts -->\n{verdict_table(record)}\n<!-- /study:verdicts -->\n"
        f"middle\n<!-- study:capacity -->\n{part_block(record, 'capacity')}\n"
        "<!-- /study:capacity -->\nend\n"
    )
    assert fill_blocks(filled, record) == filled
    assert part_block(record, "capacity") in render_markdown(record)
    empty = "<!-- study:capacity -->\n<!-- /study:capacity -->"
    assert fill_blocks(empty, record) == (
        f"<!-- study:capacity -->\n{part_block(record, 'capacity')}\n<!-- /study:capacity -->"
    )
    with pytest.raises(ValueError, match="study block 'budget'"):
        fill_blocks("<!-- study:budget -->\nx\n<!-- /study:budget -->", record)
    # a part run later into its own folder fills its block from its own record
    later = copy.deepcopy(record)
    later["parts"] = {"budget": copy.deepcopy(record["parts"]["capacity"])}
    later["parts"]["budget"]["claim"] = "a later part"
    both = fill_blocks(stale + "<!-- study:budget -->\n<!-- /study:budget -->", record, later)
    assert both.endswith(
        f"<!-- study:budget -->\n{part_block(later, 'budget')}\n<!-- /study:budget -->"
    )
    assert "Claim: a later part." in both
    assert both.startswith(filled)  # the verdicts and the first record's parts as before


def test_bad_options_are_one_line_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["study", "--only", "table2", "--quick"]) == 2
    assert "--only: unknown part(s) ['table2']" in capsys.readouterr().err
    assert main(["study", "--seeds", "1", "--quick"]) == 2
    assert "at least two distinct seeds" in capsys.readouterr().err


def _part(out: Path, name: str) -> dict[str, Any]:
    record: dict[str, Any] = json.loads((out / "study.json").read_text(encoding="utf-8"))
    return record["parts"][name]


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The whole quick study, two seeds (every part and arm at the smoke-test size): its
    folder and its study.json as first written."""
    out = tmp_path_factory.mktemp("study") / "quick"
    assert main(["study", "--quick", "--seeds", "2", "--out", str(out), "--no-progress"]) == 0
    return out, json.loads((out / "study.json").read_text(encoding="utf-8"))


def test_the_quick_study_writes_every_part_with_verdicts_and_figures(
    quick_study: tuple[Path, dict[str, Any]],
) -> None:
    out, record = quick_study
    assert list(record["parts"]) == part_names()
    assert record["seeds"] == [0, 1]
    for name, part in record["parts"].items():
        assert part["verdict"] in (SUPPORTED, CONTRADICTED, NOT_RESOLVED)
        assert (out / "figures" / f"{name}.png").is_file()
        for arm in part["arms"].values():
            assert list(arm["seeds"]) == ["0", "1"]
            assert 0.0 <= arm["mean"]["Avg. (targets)"]["mean"] <= 1.0
            assert arm["mean"]["train loss"]["mean"] > 0
    assert (out / "figures" / "fig6_sensitivity.png").is_file()
    assert set(record["sensitivity"]["tables"]) == {"F", "ΔF", "DRF"}
    estimator = record["parts"]["estimator"]["arms"]
    assert "split-half ρ F" in estimator["F stable"]["quality"]
    assert "stable F vs diagonal ρ" in estimator["DRF stable"]["quality"]
    # Eq. 15 as printed selects exactly F here: its arm reuses F's runs, with its own estimate
    selection = record["parts"]["selection"]["arms"]
    assert selection["DRF paper"]["quality"]["DRF top-k ∩ F"]["mean"] == 1.0
    assert selection["DRF paper"]["seeds"] == selection["F"]["seeds"]
    paper_run = out / "runs" / selection["DRF paper"]["key"] / "seed0" / RECORD
    assert json.loads(paper_run.read_text(encoding="utf-8"))["reused"]["options"]["variant"] == "F"
    assert selection["DRF normalised"]["quality"]["DRF top-k ∩ F"]["mean"] < 1.0
    assert selection["DRF normalised"]["seeds"] != selection["F"]["seeds"]
    capacity = record["parts"]["capacity"]["arms"]
    assert capacity["Freeze"]["trainable"] == 0 < capacity["Rein"]["trainable"]
    assert capacity["Full"]["trainable"] > capacity["FisherTune"]["trainable"]
    # every sparse arm's run recorded where its budget went; Full how far its weights moved
    assert selection["F per-tensor"]["diagnostics"]["selection"]["gini"] < 0.02  # rounding
    assert selection["F"]["diagnostics"]["selection"]["gini"] > 0.05
    assert selection["Full"]["diagnostics"]["selection"] is None
    assert all(c["relative"] > 0 for c in selection["Full"]["diagnostics"]["weight_change"])
    figures = {name: f"figures/{name}.png" for name in record["parts"]}
    figures["sensitivity"] = "figures/fig6_sensitivity.png"
    for name in ("scores", "selection"):  # the bar parts whose arms select elements
        figures[f"{name}_diagnostics"] = f"figures/{name}_diagnostics.png"
        assert (out / figures[f"{name}_diagnostics"]).is_file()
    assert (out / "study.md").read_text(encoding="utf-8") == render_markdown(record, figures)
    # Each arm ran once however many parts list it: 32 distinct arms × 2 seeds.
    assert len(list((out / "runs").glob(f"*/seed*/{RECORD}"))) == 64


def test_a_study_refuses_to_overwrite_and_resume_reuses_finished_runs(
    quick_study: tuple[Path, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    out, record = quick_study
    assert main(["study", "--quick", "--seeds", "2", "--out", str(out)]) == 2
    assert "already holds a study; pass --resume" in capsys.readouterr().err
    args = ["study", "--quick", "--seeds", "2", "--out", str(out), "--resume"]
    assert main([*args, "--no-progress", "--only", "capacity"]) == 0
    assert "runs done" not in capsys.readouterr().err  # every run read back, none retrained
    assert _part(out, "capacity") == record["parts"]["capacity"]


def test_report_only_writes_the_outputs_of_finished_runs_and_trains_nothing(
    quick_study: tuple[Path, dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, record = quick_study
    copy_ = tmp_path / "copy"
    shutil.copytree(out / "runs", copy_ / "runs")
    args = ["study", "--quick", "--out", str(copy_), "--only", "selection", "--report-only"]
    assert main([*args, "--seeds", "2", "--no-progress"]) == 0
    assert "runs done" not in capsys.readouterr().err
    assert _part(copy_, "selection") == record["parts"]["selection"]
    assert (copy_ / "figures" / "selection_diagnostics.png").is_file()
    assert main([*args, "--seeds", "3"]) == 2  # seed 2 never ran: one line, nothing trained
    err = capsys.readouterr().err
    assert "--report-only: 12 run(s) of these parts and seeds have not finished" in err
    assert not list((copy_ / "runs").glob("*/seed2"))


def test_a_killed_study_resumes_to_the_same_numbers(
    quick_study: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "fishertune.cli", "study", "--quick", "--seeds", "2"]
    command += ["--only", "budget", "--out", str(out), "--no-progress"]
    environment = {**os.environ, "PYTHONHASHSEED": "0"}
    process = subprocess.Popen(
        command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    # A random moment: after 0 to 8 of the 10 runs finished, then 0 to 0.4 s into the next.
    chance = random.Random(os.getpid())
    finished, deadline = chance.randint(0, 8), time.monotonic() + 120
    while len(list(out.glob(f"runs/*/seed*/{RECORD}"))) < finished:
        assert time.monotonic() < deadline, "the study made no progress"
        time.sleep(0.02)
    time.sleep(chance.uniform(0.0, 0.4))
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL  # killed before the study finished
    assert not (out / "study.json").exists()
    assert (
        main(
            [
                "study",
                "--quick",
                "--seeds",
                "2",
                "--only",
                "budget",
                "--out",
                str(out),
                "--resume",
                "--no-progress",
            ]
        )
        == 0
    )
    assert _part(out, "budget") == quick_study[1]["parts"]["budget"]
