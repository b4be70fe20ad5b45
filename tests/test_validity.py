"""The benchmark's validity criteria V1–V3, checked on the baselines."""

from __future__ import annotations

from fishertune.workflows.validity import check_validity
from test_reporting import domain_results


def _runs(values: dict[str, list[tuple[float, float]]]) -> dict[str, list]:  # type: ignore[type-arg]
    """Per method, per seed (source mIoU, target mIoU); every class IoU equals the mIoU."""
    return {
        method: [domain_results(method, {"source": s, "fog": t, "night": t}) for s, t in seeds]
        for method, seeds in values.items()
    }


def test_a_valid_benchmark_passes_every_check() -> None:
    runs = _runs(
        {
            "full": [(0.70, 0.500), (0.71, 0.502), (0.72, 0.504)],
            "freeze": [(0.66, 0.520), (0.67, 0.522), (0.68, 0.524)],
            "lora": [(0.69, 0.530), (0.70, 0.532), (0.71, 0.534)],
            "rein": [(0.69, 0.540), (0.70, 0.542), (0.71, 0.544)],
            "fishertune": [(0.10, 0.0), (0.90, 0.9), (0.50, 0.2)],  # plays no part
        }
    )
    validity = check_validity(runs, "source")
    assert [c.verdict for c in validity.checks] == ["pass", "pass", "pass"]
    assert "source 71.0; person 71.0, pole 71.0, traffic sign 71.0, car 71.0" in (
        validity.checks[0].measured
    )
    assert "source 67.0, target average 52.2, gap 14.8" in validity.checks[1].measured
    assert "full − freeze -2.00 ± 0.00" in validity.checks[2].measured
    assert "fishertune" not in validity.table()
    measures = list(validity.measures.values())
    # full keeps 50.2 / 71 = 70.7% of its source mIoU, freeze 52.2 / 67 = 77.9%
    assert measures[0] == "yes: full 70.7%, freeze 77.9%"
    assert measures[1] == "1.00 over full, lora, rein"  # the paper's order: full < lora < rein
    assert validity.to_dict()["checks"][0]["passed"] is True


def test_failing_and_unmeasurable_checks() -> None:
    runs = _runs(
        {
            "full": [(0.50, 0.45), (0.55, 0.40)],  # not learned
            "freeze": [(0.50, 0.45), (0.52, 0.47)],  # gap of 5 points
        }
    )
    validity = check_validity(runs, "source")
    assert [c.verdict for c in validity.checks] == ["fail", "fail", "fail"]
    one_seed = check_validity(_runs({"lora": [(0.7, 0.5)]}), "source")
    assert [c.verdict for c in one_seed.checks] == ["not measured"] * 3
    assert "needs at least 2 seeds" in one_seed.table()
    assert "not measured: needs 3 of" in one_seed.table()
