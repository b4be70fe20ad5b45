"""Progress bars: shown on request, transparent otherwise."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fishertune.progress import track
from fishertune.sensitivity import diagonal_fisher


def test_track_yields_everything_with_or_without_a_bar(capsys: pytest.CaptureFixture[str]) -> None:
    assert list(track(range(5), "counting", enabled=False)) == list(range(5))
    assert capsys.readouterr().err == ""
    assert list(track(iter(range(3)), "counting", enabled=True)) == [0, 1, 2]
    shown = capsys.readouterr()
    assert "counting" in shown.err
    assert shown.out == ""


def test_estimators_report_progress(capsys: pytest.CaptureFixture[str]) -> None:
    model = nn.Linear(3, 2)
    batches = [(torch.randn(2, 3), torch.randint(0, 2, (2,)))] * 3
    diagonal_fisher(model, batches, labels="given", progress=True)
    err = capsys.readouterr().err
    assert "diagonal Fisher" in err
    assert "3/3" in err
