"""Every registered method, by registering it: trains, keeps the rest, saves and loads.

The tests loop over :func:`~fishertune.tuners.available_tuners`, so a new method is tested
by its registration; methods with an estimation stage (``Tuner.estimates``) estimate first.
The method-specific files test each method against its reference (the sparse methods down
to the element).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fishertune.tuners import available_tuners, build_tuner
from tuner_harness import check_save_load, prepared, tiny_segmentor, train_steps


@pytest.mark.parametrize("name", available_tuners())
def test_every_method_trains_and_changes_only_what_trains(name: str) -> None:
    model = tiny_segmentor()
    tuner = prepared(build_tuner(name, model))
    before = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    losses = train_steps(tuner)
    assert sum(losses[-2:]) < sum(losses[:2]), losses
    params = dict(model.backbone.named_parameters())
    changed = {n for n, value in before.items() if not torch.equal(params[n].detach(), value)}
    assert all(params[n].requires_grad for n in changed), sorted(changed)
    count = tuner.count()
    assert count.decoder > 0
    assert 0 <= tuner.trainable_now() <= count.backbone
    assert (count.backbone > 0) == (name != "freeze")
    added = {n.removeprefix("backbone.") for n in tuner.added_parameter_names()}
    # methods that add modules train only those; the others train the backbone's own tensors
    own = name != "freeze" and not tuner.added_modules
    assert bool(changed - added) == own, sorted(changed - added)


@pytest.mark.parametrize("name", available_tuners())
def test_every_method_saves_and_loads(name: str, tmp_path: Path) -> None:
    check_save_load(name, tmp_path)
