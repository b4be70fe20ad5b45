"""Shared machinery of the sparse methods: element masks over backbone weights (method.md §7).

FisherTune, ChildTune-D/-F, the random-selection baselines and the manual layer-group study all
train a subset of the backbone's own elements, chosen among the candidates of method.md §2
(Q, K, V, FFN of every block by default, split out of fused ``qkv`` tensors by
:func:`~fishertune.models.parameter_groups`). They share, here:

- the candidates and the budget: a fraction of *all* backbone parameters or an absolute count
  (the paper: 5% of 304.2M = 15.21M on ViT-L, Tables 1–4), known without data, so that
  :meth:`SparseTuner.backbone_trainable` reports it on a meta-device model;
- the selection: one :class:`~fishertune.selection.Selection` (per candidate tensor the sorted
  flat indices of the selected elements), which may only grow (nested selections, §7), with
  ``requires_grad`` on exactly the tensors holding a selected element;
- the optimiser: :class:`~fishertune.optim.SparseAdamW`, so that unselected elements never change
  (no step, no weight decay, §7); a tensor selected whole updates densely (the same AdamW
  update, without index overhead); the optimiser holds the tuner's own index tensors, and a
  selection grown during training reaches it by ``update_selection``;
- saving: the decoder plus, per partly selected tensor, the selected flat indices and their
  deltas from the pretrained values (a tensor selected whole is saved as is), never the whole
  backbone; loading applies them to a fresh segmentor with the same pretrained weights;
- the pretrained backbone, for the weight change a run reports: the current values with the
  pretrained values of the selected elements put back (unselected elements never change), from
  the references kept for the deltas and, after :meth:`SparseTuner.keep_pretrained`, a CPU
  copy of each tensor selected whole.

The data-driven selection of FisherTune and ChildTune-D (scores, top-k, growth schedule) is in
:mod:`fishertune.tuners.scoring`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from fishertune.models.parameter_groups import (
    CANDIDATE_KINDS,
    KINDS,
    ParameterGroup,
    parameter_groups,
)
from fishertune.models.segmentor import Segmentor
from fishertune.optim import SparseAdamW
from fishertune.selection import (
    GroupSlice,
    Selection,
    budget_count,
    check_fraction,
    group_selection,
    mark_trainable,
)
from fishertune.tuners.base import Tuner, TunerConfig

DEFAULT_FRACTION = 0.05
"""δ_max of the paper: 5% of all backbone parameters (15.21M of 304.2M on ViT-L, Tables 1–4)."""

INDEX_SUFFIX = ":index"
"""Saved-state key suffix of a tensor's selected flat indices (``backbone.<name>:index``)."""

DELTA_SUFFIX = ":delta"
"""Saved-state key suffix of the float64 deltas from the pretrained values at those indices."""

_CANDIDATE = "candidate"


def parse_kinds(kinds: str | Sequence[str]) -> tuple[str, ...]:
    """Element kinds from ``"Q,K,V"`` or a sequence; ``"FFN"`` stands for FFN1 and FFN2.

    Kinds are those of :func:`~fishertune.models.parameter_groups` (Q, K, V, O, FFN1, FFN2, norm,
    other); the paper's θ_FFN (Eq. 3, Fig. 3) is both FFN linears.
    """
    items = [k.strip() for k in kinds.split(",")] if isinstance(kinds, str) else list(kinds)
    out: list[str] = []
    for item in items:
        for kind in ("FFN1", "FFN2") if item == "FFN" else (item,):
            if kind not in KINDS:
                raise ValueError(f"unknown parameter kind {kind!r}; choose from {KINDS} or FFN")
            if kind not in out:
                out.append(kind)
    if not out:
        raise ValueError("no parameter kinds given")
    return tuple(out)


def seeded_generator(device: torch.device, seed: int) -> torch.Generator:
    """A generator on ``device`` seeded with ``seed`` (draws reproducible per device type)."""
    return torch.Generator(device=device).manual_seed(seed)


class SparseTuner(Tuner):
    """Base of the methods that train selected elements of the backbone's own weights.

    Subclasses choose the candidate elements (:meth:`candidate_groups`), the final budget
    (:meth:`budget`) and, when no data is needed, the selection (:meth:`initial_selection`);
    data-driven methods set it with :meth:`select` instead. Names of backbone tensors are
    those of ``segmentor.backbone.named_parameters()`` (as in ``parameter_groups``).
    """

    def __init__(self, config: TunerConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        self._total = 0
        self._groups: list[ParameterGroup] = []
        self._n_candidates = 0
        self._selection: Selection | None = None
        self._reference: dict[str, Tensor] = {}
        self._keeps_pretrained = False
        self._pretrained_whole: dict[str, Tensor] = {}
        self._optimizer: SparseAdamW | None = None
        self._sparse_names: set[str] = set()

    # ---------------------------------------------------------------- candidates and budget
    def attach(self, segmentor: Segmentor) -> None:
        """Record the backbone size and the candidate elements; nothing trains until selected.

        Works on a meta-device model (shapes only), so the budget is known without data.
        """
        backbone = segmentor.backbone
        params = dict(backbone.named_parameters())
        self._total = sum(p.numel() for p in params.values())
        self._groups = self.candidate_groups(parameter_groups(backbone))
        if not self._groups:
            raise ValueError(f"tuner {self.name!r}: no backbone element is a candidate")
        self._n_candidates = sum(params[g.name][g.index].numel() for g in self._groups)
        if self.budget() > self._n_candidates:
            raise ValueError(
                f"tuner {self.name!r}: a budget of {self.budget()} elements exceeds the "
                f"{self._n_candidates} candidate elements"
            )

    def candidate_groups(self, groups: list[ParameterGroup]) -> list[ParameterGroup]:
        """The groups (block, kind, tensor slice) whose elements may be selected."""
        raise NotImplementedError

    def budget(self) -> int:
        """Number of elements selected at the end of training (the reported trainable size)."""
        raise NotImplementedError

    @property
    def backbone_total(self) -> int:
        """Number of elements of the whole backbone (the population of the budget fraction)."""
        return self._total

    @property
    def candidate_count(self) -> int:
        """Number of candidate elements."""
        return self._n_candidates

    def backbone_trainable(self) -> int:
        """The final budget, as the paper reports it (15.21M on ViT-L for a 5% budget)."""
        return self.budget()

    def selectable_groups(self) -> list[ParameterGroup]:
        """The candidate groups (:meth:`candidate_groups` of the backbone's groups)."""
        return list(self._groups)

    def candidate_params(self) -> dict[str, nn.Parameter]:
        """Backbone tensors holding candidate elements, by backbone name."""
        names = {g.name for g in self._groups}
        return {n: p for n, p in self.segmentor.backbone.named_parameters() if n in names}

    def candidates(self) -> Selection:
        """The candidate elements, an entry per candidate tensor."""
        params = self.candidate_params()
        slices = [GroupSlice(g.name, g.index, _CANDIDATE) for g in self._groups]
        device = next(iter(params.values())).device
        shapes = {n: p.shape for n, p in params.items()}
        return group_selection(shapes, slices, _CANDIDATE, device=device)

    # ---------------------------------------------------------------- selection
    def initial_selection(self) -> Selection:
        """The selection of a method that needs no data; data-driven methods raise."""
        raise estimate_first(self.name)

    @property
    def selection(self) -> Selection:
        """The current selection, an entry per candidate tensor (made on first use)."""
        if self._selection is None:
            self.select(self.initial_selection())
        assert self._selection is not None
        return self._selection

    def selected(self) -> Selection | None:
        """The selection if it exists yet (see :attr:`selection`)."""
        return self._selection

    @property
    def selected_count(self) -> int:
        """Number of elements selected now (0 before the selection exists)."""
        return 0 if self._selection is None else self._selection.count

    def select(self, selection: Selection) -> None:
        """Set or grow the selection (it may only grow: the selected sets are nested, §7).

        The pretrained value of every newly selected element is recorded for the saved deltas;
        it is still the current value because unselected elements never change. A tensor
        selected whole is saved as is and needs no reference; after :meth:`keep_pretrained`
        its pretrained values are copied to the CPU instead. A live optimiser receives the
        grown selection; before one exists the tensors holding a selected element get
        ``requires_grad`` (:func:`~fishertune.selection.mark_trainable`).
        """
        params = self.candidate_params()
        unknown = sorted(set(selection) - set(params))
        if unknown:
            raise ValueError(f"a selection of tensors that hold no candidate element: {unknown}")
        previous = self._selection
        if previous is None:
            device = next(iter(params.values())).device
            previous = Selection.empty({n: p.shape for n, p in params.items()}, device)
        grown = previous.grow(selection)
        for name in selection:
            param, index = params[name], grown[name]  # on the tensor's device, as `previous`
            if grown.is_whole(name):
                reference = self._reference.pop(name, None)  # saved whole, no reference needed
                if self._keeps_pretrained and name not in self._pretrained_whole:
                    before = _with_reference(param, previous[name], reference)
                    self._pretrained_whole[name] = before.cpu()
                continue
            values = param.detach().reshape(-1)[index.long()]
            if name in self._reference:
                values[torch.searchsorted(index, previous[name])] = self._reference[name]
            self._reference[name] = values
        self._selection = grown
        if self._optimizer is None:
            mark_trainable(grown, params)
        else:
            self._optimizer.update_selection(
                grown.restrict([n for n in selection if n in self._sparse_names])
            )

    def keep_pretrained(self) -> None:
        """Keep, from now on, a CPU copy of the pretrained values of every tensor that gets
        selected whole (partly selected tensors keep their references on the device anyway):
        host memory for the selected whole tensors only (e.g. all candidates for ChildTune-F,
        the listed groups for the manual study), never the rest of the backbone."""
        if self._selection is not None:
            raise RuntimeError(
                f"tuner {self.name!r}: keep_pretrained() must come before the selection"
            )
        self._keeps_pretrained = True

    def pretrained_backbone(self) -> Iterator[tuple[str, Tensor]] | None:
        """Every backbone parameter before tuning: the current values with the references of
        the selected elements put back (a copy per selected tensor, made one at a time), the
        kept copies of tensors selected whole, the unselected tensors as they are (they never
        change, §7). None without :meth:`keep_pretrained`."""
        if not self._keeps_pretrained:
            return None
        return self._pretrained_tensors()

    def _pretrained_tensors(self) -> Iterator[tuple[str, Tensor]]:
        selection = self._selection
        for name, param in self.segmentor.backbone.named_parameters():
            reference = self._reference.get(name)
            if name in self._pretrained_whole:
                yield name, self._pretrained_whole[name]
            elif selection is not None and reference is not None and reference.numel():
                yield name, _with_reference(param, selection[name], reference)
            else:
                yield name, param.detach()

    # ---------------------------------------------------------------- optimisation
    def make_optimizer(
        self,
        lr: float = 1e-4,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        decoder_lr_mult: float = 1.0,
    ) -> SparseAdamW:
        """:class:`~fishertune.optim.SparseAdamW` over :meth:`param_groups` with the selection.

        The decoder updates densely; so does a backbone tensor selected whole (the same AdamW
        update); the other candidate tensors update only on their selected elements, including
        those with no element selected yet, which later growth switches on.
        """
        selection = self.selection
        self._sparse_names = {n for n in selection if not selection.is_whole(n)}
        frozen_candidates = {f"backbone.{n}" for n in selection}
        self._optimizer = SparseAdamW(
            self.param_groups(lr, weight_decay, decoder_lr_mult, also=frozen_candidates),
            selection.restrict(self._sparse_names),
            self.candidate_params(),
            lr=lr,
            betas=betas,
            weight_decay=weight_decay,
        )
        return self._optimizer

    # ---------------------------------------------------------------- saving
    def saved_state(self) -> dict[str, Tensor]:
        """The decoder, and per candidate tensor with a selection: its deltas or itself.

        A partly selected tensor ``backbone.<name>`` is saved as ``backbone.<name>:index`` (the
        sorted flat indices, int32 below 2**31 elements) and ``backbone.<name>:delta`` (tuned
        minus pretrained values there, in float64, so that pretrained + delta restores float32
        or bfloat16 values bit for bit even where an element moved far from its magnitude); a
        tensor selected whole is saved as is. Nothing else of the backbone is saved.
        """
        state = {
            name: tensor.detach().clone()
            for name, tensor in self.segmentor.state_dict().items()
            if not name.startswith("backbone.")
        }
        params = self.candidate_params()
        selection = self._selection if self._selection is not None else Selection.empty({})
        for name, index in selection.items():
            param, key = params[name], f"backbone.{name}"
            if selection.is_whole(name):
                state[key] = param.detach().clone()
            elif index.numel() > 0:
                tuned = param.detach().reshape(-1)[index.to(param.device).long()].double()
                state[key + INDEX_SUFFIX] = index.clone()
                state[key + DELTA_SUFFIX] = tuned - self._reference[name].double()
        return state

    def load_saved(self, state: Mapping[str, Tensor]) -> None:
        """Apply :meth:`saved_state` output to this freshly applied tuner's segmentor.

        The segmentor must hold the same pretrained backbone weights as the one that was tuned
        and no selection yet; the saved selection becomes this tuner's selection.
        """
        if self._selection is not None:
            raise RuntimeError(
                f"tuner {self.name!r} already has a selection; load saved deltas into a freshly "
                "applied tuner on pretrained weights"
            )
        params = self.candidate_params()
        own = self.segmentor.state_dict()
        deltas: dict[str, tuple[Tensor, Tensor]] = {}
        plain: dict[str, Tensor] = {}
        selected: dict[str, Tensor] = {}
        for key, value in state.items():
            if key.endswith(INDEX_SUFFIX):
                name = _candidate_name(key.removesuffix(INDEX_SUFFIX), params)
                deltas[name] = _checked_delta(key, value, state, params[name])
                selected[name] = deltas[name][0]
            elif key.endswith(DELTA_SUFFIX):
                if key.removesuffix(DELTA_SUFFIX) + INDEX_SUFFIX not in state:
                    raise ValueError(f"saved state: {key!r} has no matching index entry")
            elif key.startswith("backbone."):
                name = _candidate_name(key, params)
                selected[name] = torch.arange(params[name].numel(), device=params[name].device)
                plain[key] = value
            elif key in own:
                plain[key] = value
            else:
                raise ValueError(f"saved state has a key this {self.name!r} segmentor lacks: {key}")
        missing = sorted(k for k in own if not k.startswith("backbone.") and k not in state)
        if missing:
            raise ValueError(f"saved state lacks decoder keys of {self.name!r}: {missing[:10]}")
        if selected:
            # candidates the state does not name select nothing (select() gives them an entry)
            try:
                saved = Selection(selected, {n: params[n].shape for n in selected})
            except (TypeError, ValueError) as error:
                raise ValueError(f"saved state: {error}") from None
            self.select(saved)  # records the pretrained values first
        with torch.no_grad():
            for name, (index, delta) in deltas.items():
                flat = params[name].view(-1)
                flat[index] = (flat[index].double() + delta).to(flat.dtype)
        self.segmentor.load_state_dict(plain, strict=False)

    def merge(self) -> None:
        """Nothing to fold: the tuned elements are the backbone's own weights."""


def _with_reference(param: Tensor, index: Tensor, reference: Tensor | None) -> Tensor:
    """A copy of ``param`` with ``reference`` at its flat ``index`` (no reference: no index)."""
    values = param.detach().clone(memory_format=torch.contiguous_format)
    if reference is not None:
        values.view(-1)[index.to(values.device).long()] = reference.to(values.device)
    return values


def _candidate_name(key: str, params: Mapping[str, Tensor]) -> str:
    """The backbone name of saved key ``backbone.<name>``, which must be a candidate tensor."""
    name = key.removeprefix("backbone.")
    if not key.startswith("backbone.") or name not in params:
        raise ValueError(f"saved state: {key!r} is not a candidate tensor of this tuner's backbone")
    return name


def _checked_delta(
    key: str, index: Tensor, state: Mapping[str, Tensor], param: Tensor
) -> tuple[Tensor, Tensor]:
    """The saved ``(flat indices, deltas)`` of one tensor, validated, on the tensor's device."""
    delta = state.get(key.removesuffix(INDEX_SUFFIX) + DELTA_SUFFIX)
    if index.dim() != 1 or delta is None or delta.shape != index.shape:
        raise ValueError(f"saved state: {key!r} needs a matching 1-D delta entry")
    index = index.to(device=param.device, dtype=torch.int64)
    if index.numel() and not 0 <= int(index.min()) <= int(index.max()) < param.numel():
        raise ValueError(f"saved state: the indices of {key!r} are out of range")
    return index, delta.to(device=param.device, dtype=torch.float64)


def estimate_first(name: str) -> RuntimeError:
    """The error of a data-driven method used before its estimation stage."""
    return RuntimeError(
        f"tuner {name!r} selects its elements from data: call tuner.estimate(batches) first "
        "(the estimation stage of FisherTune's Algorithm 1, method.md §8 step 2)"
    )


@dataclass
class BudgetConfig(TunerConfig):
    """Options of the methods selecting a budget of candidate elements (method.md §2, §7).

    Attributes:
        fraction: the budget (δ_max) as a share of *all* backbone parameters; 0.05 when
            ``count`` is not given (the paper's 15.21M of 304.2M on ViT-L, Tables 1–4).
        count: the budget as an absolute number of elements (instead of ``fraction``).
        candidates: element kinds that may be selected: a comma-separated string or a
            sequence of ``parameter_groups`` kinds (``"FFN"`` = FFN1 and FFN2); default Q, K,
            V, FFN1, FFN2 of every block (paper Eq. 3); e.g. add ``O`` or ``other`` (patch
            embedding, position embedding, tokens, layer scales), as method.md §2 allows.
        seed: seeds the method's random draws (masks, perturbations, sampled labels).
    """

    fraction: float | None = None
    count: int | None = None
    candidates: str | Sequence[str] = CANDIDATE_KINDS
    seed: int = 0

    def __post_init__(self) -> None:
        if self.fraction is not None and self.count is not None:
            raise ValueError("give either fraction= or count= as the budget, not both")
        if self.fraction is not None and check_fraction(self.fraction) == 0.0:
            raise ValueError("fraction must be above 0 (a budget of 0 trains nothing: use freeze)")
        if self.count is not None and (isinstance(self.count, bool) or self.count < 1):
            raise ValueError(f"count must be a positive number of elements, got {self.count}")
        parse_kinds(self.candidates)


class BudgetTuner(SparseTuner):
    """A sparse method whose final selection is the budget of :class:`BudgetConfig`."""

    config_class = BudgetConfig
    config: BudgetConfig

    def candidate_groups(self, groups: list[ParameterGroup]) -> list[ParameterGroup]:
        """The groups of the configured candidate kinds, wherever they are (Q / K / V / O / FFN
        live in the blocks; ``norm`` and ``other`` also cover the embeddings and tokens)."""
        kinds = set(parse_kinds(self.config.candidates))
        return [g for g in groups if g.kind in kinds]

    def budget(self) -> int:
        """``count``, or round(fraction × all backbone parameters) (method.md §7)."""
        if self.config.count is not None:
            return self.config.count
        return budget_count(self.max_fraction, self._total)

    @property
    def max_fraction(self) -> float:
        """δ_max: ``fraction`` (default 0.05), or ``count`` over all backbone parameters."""
        if self.config.count is not None:
            return self.config.count / self._total
        return DEFAULT_FRACTION if self.config.fraction is None else self.config.fraction
