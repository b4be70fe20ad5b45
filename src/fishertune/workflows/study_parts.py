"""The parts of ``fishertune study``: the paper's experiments, their arms and their claims.

Each :class:`Part` reproduces one experiment of the paper (or of Rein, for ``capacity``) on the
embedded benchmark. An :class:`Arm` is a method with option overrides; arms with the same
method and effective options are one run per seed however many parts list them (e.g.
FisherTune's default arm serves ``table1``, ``perturbation``, ``budget`` and ``capacity``). A
:class:`Claim` is one paired comparison the paper makes, stated with its direction; its verdict
comes from the interval of the per-seed difference (method.md §11), never by hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "LOSS",
    "METRICS",
    "PARTS",
    "TARGET",
    "Arm",
    "Claim",
    "Part",
    "part_names",
]

TARGET = "target"
"""Metric of a claim: the mean mIoU over the unseen target styles."""

LOSS = "loss"
"""Metric of a claim: the source training loss at the end of training."""

METRICS = (TARGET, LOSS)


@dataclass(frozen=True)
class Arm:
    """One arm of a part: ``method`` with ``options`` overriding its base options.

    Attributes:
        label: how the part's table names the arm (e.g. ``"Random Q"``).
        method: a registered method name.
        options: option overrides, as (name, value) pairs, on top of the study configuration's
            ``method.options`` when ``method`` is its method, the method's defaults otherwise
            (:func:`~fishertune.workflows.training.method_config`).
        same_as_f: the label of the part's arm that selects by F alone (same estimator and
            seeds, constant schedule). When this arm's estimate shows its DRF selection to be
            exactly that F selection (:class:`~fishertune.sensitivity.DomainTerm` overlap with
            F of 100%), the study reuses that arm's run instead of training the same selection
            again (e.g. Eq. 15 as printed, whose domain term is scaled by γ).
    """

    label: str
    method: str
    options: tuple[tuple[str, Any], ...] = ()
    same_as_f: str | None = None

    def __post_init__(self) -> None:
        if self.same_as_f is not None and ("schedule", "constant") not in self.options:
            raise ValueError(
                f"study arm {self.label}: same_as_f needs the constant schedule (one selection)"
            )

    def key(self, base_method: str, base_options: Mapping[str, Any]) -> str:
        """The run folder of this arm: the method, then each overridden option whose value
        differs from the base, sorted (``fishertune-schedule=constant-variant=F``); equal for
        equal runs. The base options are ``base_options`` when ``method`` is ``base_method``
        (the study configuration's), the method's defaults otherwise."""
        base = dict(base_options) if self.method == base_method else {}
        parts = [f"{k}={_text(v)}" for k, v in sorted(self.options) if base.get(k) != v]
        return "-".join([self.method, *parts])


def _text(value: Any) -> str:
    """An option value in a folder name."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "+".join(_text(v) for v in value)
    return str(value)


@dataclass(frozen=True)
class Claim:
    """``arm`` − ``reference`` on ``metric`` is positive (``higher``) or negative."""

    arm: str
    reference: str
    metric: str = TARGET
    higher: bool = True

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"claim metric must be one of {METRICS}, got {self.metric!r}")

    def describe(self) -> str:
        """E.g. ``FisherTune > Rein (target average)``."""
        what = "target average" if self.metric == TARGET else "source training loss"
        return f"{self.arm} {'>' if self.higher else '<'} {self.reference} ({what})"


@dataclass(frozen=True)
class Part:
    """One experiment: its arms, the comparisons its table shows and the claims it tests.

    Attributes:
        name: the ``--only`` name.
        paper: where the experiment is in the paper.
        claim: the paper's claim in one line.
        arms: the arms, in table order (labels unique within the part).
        pairs: (arm, reference) label pairs whose paired difference the part reports.
        claims: the comparisons the verdict is made of: supported when every one is resolved
            in the paper's direction, contradicted when any is resolved the other way, not
            resolved otherwise.
        figure: ``"bars"`` (target average per arm), ``"domains"`` (per domain and arm),
            ``"grouped"`` (``groups``), ``"budget"`` (target average against the budget) or
            ``"capacity"`` (training loss and target average against trainable parameters).
        groups: for ``"grouped"``: per group on the x axis, its (series, arm label) pairs.
    """

    name: str
    paper: str
    claim: str
    arms: tuple[Arm, ...]
    pairs: tuple[tuple[str, str], ...]
    claims: tuple[Claim, ...]
    figure: str = "bars"
    groups: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()

    def __post_init__(self) -> None:
        labels = [arm.label for arm in self.arms]
        if len(set(labels)) != len(labels):
            raise ValueError(f"study part {self.name}: arm labels repeat: {labels}")
        named = {
            *(x for pair in self.pairs for x in pair),
            *(x for claim in self.claims for x in (claim.arm, claim.reference)),
            *(label for _, series in self.groups for _, label in series),
        }
        named |= {arm.same_as_f for arm in self.arms if arm.same_as_f is not None}
        unknown = sorted(named - set(labels))
        if unknown:
            raise ValueError(f"study part {self.name}: unknown arms {unknown}")

    def arm(self, label: str) -> Arm:
        """The arm called ``label``."""
        return next(arm for arm in self.arms if arm.label == label)


CONSTANT = ("schedule", "constant")
"""FisherTune at δ_max throughout (Table 4's and Fig. 5's "5% fine-tunable parameters")."""

_FULL = Arm("Full", "full")
_FREEZE = Arm("Freeze", "freeze")
_LORA = Arm("LoRA", "lora")
_REIN = Arm("Rein", "rein")
_VPT = Arm("VPT", "vpt")
_ADAPTFORMER = Arm("AdaptFormer", "adaptformer")
_FISHERTUNE = Arm("FisherTune", "fishertune")

_BASELINES = (
    _FULL,
    _FREEZE,
    _LORA,
    _VPT,
    _ADAPTFORMER,
    _REIN,
    Arm("VQT", "vqt"),
    Arm("ChildTune-D", "childtune_d"),
    Arm("ChildTune-F", "childtune_f"),
    Arm("Random", "random"),
)

_SCORES = (
    Arm("Random", "random"),
    Arm("Random Q", "random", (("group", "Q"),)),
    Arm("Random K", "random", (("group", "K"),)),
    Arm("Random V", "random", (("group", "V"),)),
    Arm("F", "fishertune", (CONSTANT, ("variant", "F"))),
    Arm("ΔF", "fishertune", (CONSTANT, ("variant", "dF"))),
    Arm("DRF", "fishertune", (CONSTANT,)),
)

_ESTIMATORS = (
    Arm("F diagonal", "fishertune", (CONSTANT, ("variant", "F"), ("estimator", "diagonal"))),
    Arm("F stable", "fishertune", (CONSTANT, ("variant", "F"))),
    Arm("DRF diagonal", "fishertune", (CONSTANT, ("estimator", "diagonal"))),
    Arm("DRF stable", "fishertune", (CONSTANT,)),
)

_PERTURBED = (_ADAPTFORMER, _VPT, _REIN, _FISHERTUNE)

_F = Arm("F", "fishertune", (CONSTANT, ("variant", "F")))
_SELECTION = (
    Arm("Random", "random"),
    _F,
    Arm("F per-tensor", "fishertune", (*_F.options, ("allocation", "per_tensor"))),
    Arm("F shuffled", "fishertune", (*_F.options, ("allocation", "shuffled"))),
    Arm("ΔF", "fishertune", (CONSTANT, ("variant", "dF"))),
    Arm("DRF normalised", "fishertune", (CONSTANT,)),
    Arm("DRF rank", "fishertune", (CONSTANT, ("combine", "rank"))),
    Arm("DRF paper", "fishertune", (CONSTANT, ("combine", "paper")), same_as_f="F"),
    Arm("DRF per-tensor", "fishertune", (CONSTANT, ("allocation", "per_tensor"))),
    _FULL,
    _FREEZE,
    _FISHERTUNE,
)
"""Issue 21's arms: every score and allocation at a constant 5% with the stable estimator, and
FisherTune with its defaults (the growing schedule and the decided combination; table1's arm
re-run, compared in pairs only: the part's claims were fixed before it was added)."""

_SELECTION_CLAIMS = (
    Claim("DRF normalised", "F"),
    Claim("DRF normalised", "Random"),
    Claim("F per-tensor", "F"),
    Claim("Random", "F shuffled"),
    Claim("F shuffled", "F"),
)
"""Written before any run of the part (commit of the part's definition): the paper's Table 4
claims for the decided combination, and the three that tell why random beats F: global top-k's
concentration hurts (per-tensor > global), the allocation alone explains the gap (random >
shuffled), and the elements matter too (shuffled > global)."""

_BUDGETS = ((0.01, 0.002), (0.02, 0.004), (0.05, 0.01), (0.10, 0.02), (0.20, 0.04))
"""(δ_max, δ_min): δ_min is a fifth of δ_max, as the defaults 1% → 5%."""


def _budget_label(fraction: float) -> str:
    return f"{100 * fraction:g}%"


PARTS: tuple[Part, ...] = (
    Part(
        name="table1",
        paper="Table 1 / Fig. 2",
        claim="FisherTune's target average is above every baseline's",
        arms=(*_BASELINES, _FISHERTUNE),
        pairs=tuple(("FisherTune", arm.label) for arm in _BASELINES),
        claims=tuple(Claim("FisherTune", arm.label) for arm in _BASELINES),
        figure="domains",
    ),
    Part(
        name="scores",
        paper="Table 4",
        claim="at the same 5% budget, selecting by DRF beats random selection and the "
        "task-only Fisher F",
        arms=_SCORES,
        pairs=tuple(("DRF", arm.label) for arm in _SCORES if arm.label != "DRF"),
        claims=(Claim("DRF", "Random"), Claim("DRF", "F")),
    ),
    Part(
        name="estimator",
        paper="Fig. 5",
        claim="the stable (variational) estimate selects better than the diagonal one, for F "
        "and for DRF",
        arms=_ESTIMATORS,
        pairs=(("F stable", "F diagonal"), ("DRF stable", "DRF diagonal")),
        claims=(Claim("F stable", "F diagonal"), Claim("DRF stable", "DRF diagonal")),
        figure="grouped",
        groups=(
            ("F", (("diagonal", "F diagonal"), ("stable", "F stable"))),
            ("DRF", (("diagonal", "DRF diagonal"), ("stable", "DRF stable"))),
        ),
    ),
    Part(
        name="perturbation",
        paper="Table 5",
        claim="training with the feature perturbation (FP) raises each method's target average",
        arms=tuple(
            arm
            for base in _PERTURBED
            for arm in (
                base,
                Arm(f"{base.label} + FP", base.method, (("train_perturbation", True),)),
            )
        ),
        pairs=tuple((f"{arm.label} + FP", arm.label) for arm in _PERTURBED),
        claims=tuple(Claim(f"{arm.label} + FP", arm.label) for arm in _PERTURBED),
        figure="grouped",
        groups=tuple(
            (arm.label, (("without FP", arm.label), ("with FP", f"{arm.label} + FP")))
            for arm in _PERTURBED
        ),
    ),
    Part(
        name="budget",
        paper="Appendix C",
        claim="δ_max = 5% (the paper's setting) beats a smaller (1%) and a larger (20%) share",
        arms=tuple(
            Arm(
                _budget_label(high),
                "fishertune",
                (("fraction", high), ("min_fraction", low)),
            )
            for high, low in _BUDGETS
        ),
        pairs=tuple(
            ("5%", _budget_label(high)) for high, _ in _BUDGETS if _budget_label(high) != "5%"
        ),
        claims=(Claim("5%", "1%"), Claim("5%", "20%")),
        figure="budget",
    ),
    Part(
        name="capacity",
        paper="Rein, Fig. 5",
        claim="fewer trainable parameters than Full leave a higher source training loss yet "
        "a higher target average (Full over-fits the source)",
        arms=(_FREEZE, _LORA, _REIN, _FISHERTUNE, _FULL),
        pairs=tuple((arm.label, "Full") for arm in (_FREEZE, _LORA, _REIN, _FISHERTUNE)),
        claims=(Claim("Rein", "Full", LOSS), Claim("Rein", "Full")),
        figure="capacity",
    ),
    Part(
        name="selection",
        paper="Table 4, and why random beats Fisher",
        claim="the decided DRF beats F and random selection; F's loss to random comes from "
        "where global top-k puts the budget and from which elements it picks",
        arms=_SELECTION,
        pairs=(
            *((arm.label, "F") for arm in _SELECTION[2:9]),
            ("DRF normalised", "Random"),
            ("Random", "F shuffled"),
            ("DRF per-tensor", "DRF normalised"),
            ("Random", "Full"),
            ("Full", "Freeze"),
            ("FisherTune", "Random"),
            ("FisherTune", "Full"),
            ("FisherTune", "Freeze"),
            ("FisherTune", "DRF normalised"),
        ),
        claims=_SELECTION_CLAIMS,
    ),
)


def part_names() -> list[str]:
    """The parts' ``--only`` names in study order."""
    return [part.name for part in PARTS]
