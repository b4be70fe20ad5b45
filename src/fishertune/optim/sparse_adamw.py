"""AdamW restricted to selected elements, with state only for those elements (§7).

FisherTune trains a small, growing, nested subset of a backbone's elements chosen by Fisher
scores, and method.md §7 requires that "unselected elements must not change at all: no gradient
step and no weight decay". A dense ``torch.optim.AdamW`` applied after zeroing gradients still
decays every element and keeps two full-size moment tensors, so :class:`SparseAdamW` is its own
optimiser:

- It is given a :class:`~fishertune.selection.Selection` and, for each selected parameter,
  holds the selection's own sorted flat indices (int32 below 2**31 elements, the same tensor
  the caller's selection holds), their two moments and a per-element step counter: memory is
  proportional to the number of selected elements, not to the parameter's size.
- The per-element step makes an element added by :meth:`SparseAdamW.update_selection` run a fresh
  AdamW from step 1 with zero moments, bias correction included; a shared per-parameter step
  would give late elements first steps about three times too large.
- The update of a selected element repeats, operation for operation, the non-capturable
  single-tensor path of ``torch.optim.AdamW`` (``_single_tensor_adam``), so on CPU it equals
  AdamW bit for bit; unselected elements are never written and their gradients never read.
- On CPU the update runs in a fused C kernel (:mod:`fishertune.optim.sparse_adamw_kernel`,
  compiled on first use) that reads each selected gradient element once and writes each
  selected parameter element once, with torch's own square root; torch's indexing ops (two
  gathers and a scatter) are the fallback and the path on other devices. Once per process the
  kernel is checked to give exactly the fallback's result before it is used.
- Parameters without a mask are updated densely, exactly like ``torch.optim.AdamW``.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping
from itertools import chain
from typing import Any, overload

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import ParamsT, StateDict

from fishertune.optim.sparse_adamw_kernel import (
    Kernel,
    KernelTensor,
    SquareRoot,
    kernel_library,
    run_update,
)
from fishertune.selection import Selection, mark_trainable

__all__ = ["SparseAdamW", "fused_kernel_status"]


def _describe(tensor: object) -> str:
    if isinstance(tensor, Tensor):
        return f"tensor of shape {tuple(tensor.shape)}"
    return f"object of type {type(tensor).__name__}"


def _real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    return float(value)


def _check_hyperparameters(group: Mapping[str, Any]) -> None:
    """Raise if a parameter group's lr, betas, eps or weight_decay is invalid."""
    for name in ("lr", "eps", "weight_decay"):
        if not _real(name, group[name]) >= 0.0:
            raise ValueError(f"invalid {name}: {group[name]} (must be >= 0)")
    betas = group["betas"]
    if not isinstance(betas, tuple | list) or len(betas) != 2:
        raise TypeError(f"betas must be a pair of real numbers, got {betas!r}")
    for position, beta in enumerate(betas):
        if not 0.0 <= _real(f"betas[{position}]", beta) < 1.0:
            raise ValueError(f"invalid betas[{position}]: {beta} (must be in [0, 1))")


class SparseAdamW(Optimizer):
    """AdamW that updates only the selected elements of the selected parameters.

    Args:
        params: parameters or parameter-group dicts, as for any ``torch.optim.Optimizer``;
            groups may override ``lr``, ``betas``, ``eps`` and ``weight_decay``.
        selection: the elements to train, by parameter name; parameters it does not name are
            updated densely. None: every parameter is dense (``torch.optim.AdamW``).
        parameters: name → parameter for at least the names of ``selection`` (e.g.
            ``dict(model.named_parameters())``); later selections are resolved through it.
        lr, betas, eps, weight_decay: as in ``torch.optim.AdamW`` (decoupled weight decay).
        fused: use the fused CPU kernel for contiguous float32/float64 CPU parameters with
            int32 indices. None: when it can be compiled and passes its check (otherwise one
            warning and torch's indexing ops); True: required (RuntimeError naming the reason
            if unavailable); False: never. Results are the same bit for bit.

    A selected element gets exactly the ``torch.optim.AdamW`` update, counted from the step at
    which it was selected; an unselected element never changes, neither by a gradient step nor
    by weight decay (method.md §7: "unselected elements must not change at all"), and its
    gradient is ignored. A selected parameter's state is ``indices`` (sorted flat indices of the
    selected elements), ``exp_avg``, ``exp_avg_sq`` and ``step`` (int32), one entry per
    selected element, plus ``max_step`` and ``min_step``, Python ints equal to the largest and
    smallest per-element step (known without reading the device), so it grows with the number
    of selected elements only. A parameter with no selected element gets
    ``requires_grad_(False)`` so that backward skips it, and is switched back on when
    :meth:`update_selection` selects elements in it (:func:`~fishertune.selection.mark_trainable`).
    Dense parameters have ``torch.optim.AdamW``'s
    state (``step``, full-size ``exp_avg`` and ``exp_avg_sq``).

    Selected parameters must be real floating point (any memory layout: flat indices are
    row-major positions); the update is bit-identical to ``torch.optim.AdamW``
    (``foreach=False``) for float32 and float64 on CPU.
    """

    def __init__(
        self,
        params: ParamsT,
        selection: Selection | None = None,
        parameters: Mapping[str, Tensor] | None = None,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        fused: bool | None = None,
    ) -> None:
        defaults: dict[str, Any] = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
        }
        _check_hyperparameters(defaults)
        if fused is not None and not isinstance(fused, bool):
            raise TypeError(f"fused must be True, False or None, got {fused!r}")
        self._fused = fused
        self._compiled: Kernel | None = None
        self._kernel_resolved = fused is False
        self._bias_tables: dict[tuple[float, float, torch.device], tuple[Tensor, Tensor]] = {}
        super().__init__(params, defaults)
        self._parameters: dict[str, Tensor] = dict(parameters or {})
        indices: dict[str, Tensor] = {}
        given = Selection.empty({}) if selection is None else selection
        for name, param, index in self._checked(given):
            indices[name] = index
            self.state[param] = {
                "indices": index,
                "exp_avg": torch.zeros(index.numel(), dtype=param.dtype, device=param.device),
                "exp_avg_sq": torch.zeros(index.numel(), dtype=param.dtype, device=param.device),
                "step": torch.zeros(index.numel(), dtype=torch.int32, device=param.device),
                "max_step": 0,
                "min_step": 0,
            }
        self._selection = self._held(indices)
        mark_trainable(self._selection, self._parameters)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group after checking its hyper-parameters (see ``Optimizer``)."""
        _check_hyperparameters({**self.defaults, **param_group})
        super().add_param_group(param_group)

    @property
    def selection(self) -> Selection:
        """The selected elements of the selected parameters, as the optimiser holds them."""
        return self._selection

    def update_selection(self, selection: Selection) -> None:
        """Grow the selection of the selected parameters that ``selection`` names.

        Each new entry must contain the parameter's current selection ("selections may only
        grow", §7: the selected sets are nested). Already selected elements keep their moments
        and step; new elements start with zero moments and step 0, i.e. a fresh AdamW.
        Parameters ``selection`` does not name keep theirs. Nothing changes if any entry is
        rejected.
        """
        checked = self._checked(selection)
        for name, param, _ in checked:
            if "indices" not in self.state[param]:
                raise ValueError(
                    f"selection[{name!r}]: the parameter ({_describe(param)}) has no selection "
                    "and updates densely; only selected parameters can have their selection grown"
                )
        grown = self._selection.grow(selection)  # refuses to drop an element; changes nothing
        for name, param, _ in checked:
            state, index = self.state[param], grown[name]
            positions = torch.searchsorted(index, state["indices"])
            for key in ("exp_avg", "exp_avg_sq", "step"):
                old = state[key]
                state[key] = old.new_zeros(index.numel()).index_copy_(0, positions, old)
            if index.numel() > state["indices"].numel():
                state["min_step"] = 0
            state["indices"] = index
        self._selection = grown
        mark_trainable(self._selection, self._parameters)

    @overload
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Perform one optimisation step; ``closure`` re-evaluates the loss (optional)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            step_tables: dict[tuple[int, torch.dtype, torch.device], tuple[Tensor, Tensor]] = {}
            fused: dict[torch.dtype, list[tuple[Tensor, Tensor, dict[str, Any]]]] = {}
            for param in group["params"]:
                grad = param.grad
                if grad is None:
                    continue
                if grad.is_sparse:
                    raise RuntimeError("SparseAdamW does not support sparse gradients")
                state = self.state[param]
                if "indices" not in state:
                    _dense_adamw(param, grad, state, group)
                elif state["indices"].numel() == 0:
                    continue
                elif _kernel_layout(param, grad, state) and param.dtype in self._kernel_dtypes():
                    fused.setdefault(param.dtype, []).append((param, grad, state))
                else:
                    self._masked_adamw(param, grad, state, group, step_tables)
            for dtype, entries in fused.items():
                self._fused_adamw(entries, group, dtype, step_tables)
        return loss

    def _kernel_dtypes(self) -> Mapping[torch.dtype, SquareRoot]:
        """The dtypes the fused kernel serves (none if this optimiser may not use it)."""
        kernel = self._kernel()
        return {} if kernel is None else kernel.roots

    def _kernel(self) -> Kernel | None:
        """The fused CPU kernel if this optimiser may use it (resolved, and compiled if need
        be, when a CPU parameter first needs it)."""
        if not self._kernel_resolved:
            self._kernel_resolved = True
            found = _checked_kernel()
            if isinstance(found, str):
                if self._fused:
                    raise RuntimeError(f"SparseAdamW(fused=True): {found}")
                _warn_kernel_unavailable(found)
            else:
                self._compiled = found
        return self._compiled

    def load_state_dict(self, state_dict: StateDict) -> None:
        """Load a state produced by :meth:`state_dict`, keeping integer tensors integer.

        ``Optimizer.load_state_dict`` casts every state tensor except ``step`` to the
        parameter's floating dtype, which would turn the int32 indices into floats (inexact
        above 2**24); integer tensors are therefore set aside and restored on the parameter's
        device after the base class has loaded the rest.
        """
        integer_state: dict[int, dict[str, Tensor]] = {}
        other_state: dict[int, dict[str, Any]] = {}
        for param_id, param_state in state_dict["state"].items():
            integer_state[param_id] = {
                key: value
                for key, value in param_state.items()
                if isinstance(value, Tensor) and not value.is_floating_point()
            }
            other_state[param_id] = {
                key: value
                for key, value in param_state.items()
                if key not in integer_state[param_id]
            }
        super().load_state_dict({**state_dict, "state": other_state})
        saved_ids = chain.from_iterable(group["params"] for group in state_dict["param_groups"])
        params = chain.from_iterable(group["params"] for group in self.param_groups)
        for param_id, param in zip(saved_ids, params, strict=True):
            for key, value in integer_state.get(param_id, {}).items():
                self.state[param][key] = value.to(device=param.device)
            for key, value in self.state[param].items():
                if isinstance(value, Tensor):
                    self.state[param][key] = value.contiguous()
        names = {id(param): name for name, param in self._parameters.items()}
        indices: dict[str, Tensor] = {}
        for group in self.param_groups:
            for param in group["params"]:
                if "indices" in self.state[param]:
                    if id(param) not in names:
                        raise ValueError(
                            f"the loaded state selects elements of a parameter "
                            f"({_describe(param)}) that parameters= does not name"
                        )
                    indices[names[id(param)]] = self.state[param]["indices"]
        self._selection = self._held(indices)
        mark_trainable(self._selection, self._parameters)

    def _masked_adamw(
        self,
        param: Tensor,
        grad: Tensor,
        state: dict[str, Any],
        group: Mapping[str, Any],
        step_tables: dict[tuple[int, torch.dtype, torch.device], tuple[Tensor, Tensor]],
    ) -> None:
        """AdamW on the selected elements: gather them by flat index, update, write back.

        While all selected elements share one step (no element added since the first step,
        e.g. a constant selection) the bias corrections are AdamW's own scalars; otherwise
        each element gets those of its own step from tables shared within the parameter group
        (``step_tables``, keyed by length, dtype and device).
        """
        state["step"].add_(1)
        state["max_step"] += 1
        state["min_step"] += 1
        positions = state["indices"].long()
        values = torch.take(param, positions)
        neg_step_size: float | Tensor
        bias_correction2_sqrt: float | Tensor
        if state["min_step"] == state["max_step"]:
            neg_step_size, bias_correction2_sqrt = _bias_corrections(group, state["max_step"])
        else:
            key = (state["max_step"] + 1, param.dtype, param.device)
            if key not in step_tables:
                step_tables[key] = self._step_tables(group, *key)
            neg_step_size, bias_correction2_sqrt = (
                table.index_select(0, state["step"]) for table in step_tables[key]
            )
        _adamw_update(
            values,
            torch.take(grad, positions),
            state["exp_avg"],
            state["exp_avg_sq"],
            group,
            neg_step_size,
            bias_correction2_sqrt,
        )
        param.put_(positions, values)

    def _fused_adamw(
        self,
        entries: list[tuple[Tensor, Tensor, dict[str, Any]]],
        group: Mapping[str, Any],
        dtype: torch.dtype,
        step_tables: dict[tuple[int, torch.dtype, torch.device], tuple[Tensor, Tensor]],
    ) -> None:
        """AdamW on the selected elements of CPU parameters of one dtype, in the fused kernel,
        which reads both bias corrections per element from the step tables (for a single
        cohort these hold exactly the scalars AdamW uses)."""
        assert self._compiled is not None
        for _, _, state in entries:
            state["max_step"] += 1
            state["min_step"] += 1
        last = max(state["max_step"] for _, _, state in entries)
        key = (last + 1, dtype, torch.device("cpu"))
        if key not in step_tables:
            step_tables[key] = self._step_tables(group, *key)
        neg_step_size, bias_correction2_sqrt = step_tables[key]
        weight_decay = group["weight_decay"]
        run_update(
            self._compiled,
            [
                KernelTensor(
                    param=param,
                    grad=grad,
                    exp_avg=state["exp_avg"],
                    exp_avg_sq=state["exp_avg_sq"],
                    step=state["step"],
                    indices=state["indices"],
                )
                for param, grad, state in entries
            ],
            dtype,
            betas=group["betas"],
            neg_step_size=neg_step_size,
            bias_correction2_sqrt=bias_correction2_sqrt,
            decay=1 - group["lr"] * weight_decay if weight_decay != 0 else None,
            eps=group["eps"],
            uniform=all(state["min_step"] == last for _, _, state in entries),
        )

    def _checked(self, selection: Selection) -> list[tuple[str, Tensor, Tensor]]:
        """Validate ``selection`` against the parameters; return (name, parameter, indices on
        the parameter's device) triples."""
        if not isinstance(selection, Selection):
            raise TypeError(f"selection must be a Selection, got {type(selection).__name__}")
        known = {id(param) for group in self.param_groups for param in group["params"]}
        checked = []
        for name, index in selection.items():
            param = self._parameters.get(name)
            if param is None:
                raise ValueError(f"selection[{name!r}]: parameters= has no tensor of that name")
            if id(param) not in known:
                raise ValueError(
                    f"selection[{name!r}]: a {_describe(param)} that is not a parameter of this "
                    "optimiser"
                )
            if selection.shape(name) != param.shape:
                raise ValueError(
                    f"selection[{name!r}] of shape {tuple(selection.shape(name))} does not match "
                    f"the parameter ({_describe(param)})"
                )
            if not param.is_floating_point():
                raise TypeError(
                    f"selected parameter ({_describe(param)}) must be real floating point, "
                    f"got {param.dtype}"
                )
            checked.append((name, param, index.to(device=param.device)))
        return checked

    def _held(self, indices: dict[str, Tensor]) -> Selection:
        """The selection of the selected parameters, from their state's indices."""
        return Selection(indices, {n: self._parameters[n].shape for n in indices})

    def _step_tables(
        self, group: Mapping[str, Any], length: int, dtype: torch.dtype, device: torch.device
    ) -> tuple[Tensor, Tensor]:
        """``-lr / (1 - beta1**k)`` and ``sqrt(1 - beta2**k)`` for k < length, in ``dtype``.

        AdamW computes both in Python floats (float64) and rounds them to the parameter's dtype
        when they meet a tensor; these tables do the same per step value, so gathering them
        with the per-element step gives each element its own AdamW scalars. Entry 0 is unused.
        """
        beta1, beta2 = group["betas"]
        key = (float(beta1), float(beta2), device)
        tables = self._bias_tables.get(key)
        if tables is None or tables[0].numel() < length:
            size = 2 * length  # doubling keeps the Python work amortised O(1) per step
            steps = [float(k) for k in range(size)]
            tables = (
                torch.tensor([1 - beta1**k for k in steps], dtype=torch.float64, device=device),
                torch.tensor(
                    [(1 - beta2**k) ** 0.5 for k in steps], dtype=torch.float64, device=device
                ),
            )
            self._bias_tables[key] = tables
        bias_correction1, bias_correction2_sqrt = (table[:length] for table in tables)
        # lr / tensor would be computed as reciprocal(tensor) * lr: divide explicitly.
        neg_step_size = torch.full_like(bias_correction1, -group["lr"]).div_(bias_correction1)
        return neg_step_size.to(dtype), bias_correction2_sqrt.to(dtype)


def _kernel_layout(param: Tensor, grad: Tensor, state: Mapping[str, Any]) -> bool:
    """Whether the fused kernel's layout assumptions hold for this parameter: on the CPU,
    parameter and gradient contiguous and of one dtype (flat index = memory offset), int32
    indices and steps. The compact state is contiguous and has the parameter's dtype and
    device (made so on creation, growth and loading)."""
    return (
        param.device.type == "cpu"
        and grad.dtype == param.dtype
        and param.is_contiguous()
        and grad.is_contiguous()
        and state["indices"].dtype == torch.int32
        and state["step"].dtype == torch.int32
    )


@functools.cache
def _checked_kernel() -> Kernel | str:
    """The fused kernel once it has reproduced the indexing-ops path bit for bit on a small
    problem (both dtypes, two cohorts, both branches of torch's lerp, with and without weight
    decay), or the reason it is not used."""
    kernel = kernel_library()
    if isinstance(kernel, str):
        return kernel
    generator = torch.Generator().manual_seed(0)
    for dtype in kernel.roots:
        for betas, weight_decay in (((0.9, 0.999), 0.01), ((0.3, 0.99), 0.0)):
            shapes = ((37, 53), (129,), (5,))
            start = [torch.randn(shape, generator=generator, dtype=dtype) for shape in shapes]
            ranks = [torch.rand(shape, generator=generator) for shape in shapes]
            grads = [
                [
                    torch.randn(shape, generator=generator, dtype=dtype) * 10.0**-k
                    for shape in shapes
                ]
                for k in range(4)
            ]
            results = []
            for use_kernel in (False, True):
                params = [torch.nn.Parameter(value.clone()) for value in start]
                named = {f"p{i}": param for i, param in enumerate(params)}
                masks = [
                    {f"p{i}": rank < share for i, rank in enumerate(ranks)} for share in (0.3, 0.6)
                ]
                optimizer = SparseAdamW(
                    params,
                    Selection.from_masks(masks[0]),
                    named,
                    lr=0.05,
                    betas=betas,
                    weight_decay=weight_decay,
                    fused=False,
                )
                optimizer._compiled = kernel if use_kernel else None
                for k, step_grads in enumerate(grads):
                    for param, grad in zip(params, step_grads, strict=True):
                        param.grad = grad.clone()
                    optimizer.step()
                    if k == 1:
                        optimizer.update_selection(Selection.from_masks(masks[1]))
                results.append([param.detach() for param in params])
            for reference, fused in zip(*results, strict=True):
                if not torch.equal(reference, fused):
                    return (
                        f"the compiled kernel's {dtype} update differs from torch's on this machine"
                    )
    return kernel


def fused_kernel_status() -> str:
    """One line on the fused CPU kernel: in use, with its square roots, or why not."""
    found = _checked_kernel()
    if isinstance(found, str):
        return f"not used: {found}; torch's indexing ops instead"
    roots = ", ".join(
        f"{str(dtype).removeprefix('torch.')}: {root.name}" for dtype, root in found.roots.items()
    )
    return f"compiled and checked (square root {roots})"


@functools.cache
def _warn_kernel_unavailable(reason: str) -> None:
    warnings.warn(
        f"SparseAdamW: fused CPU kernel not used, {reason}; updating with torch's indexing ops "
        "(same results, about twice the step time)",
        RuntimeWarning,
        stacklevel=4,
    )


def _bias_corrections(group: Mapping[str, Any], step: float) -> tuple[float, float]:
    """AdamW's ``-lr / (1 - beta1**step)`` and ``sqrt(1 - beta2**step)`` as Python floats."""
    beta1, beta2 = group["betas"]
    step = float(step)
    step_size = group["lr"] / (1 - beta1**step)
    return -step_size, (1 - beta2**step) ** 0.5


def _dense_adamw(
    param: Tensor, grad: Tensor, state: dict[str, Any], group: Mapping[str, Any]
) -> None:
    """``torch.optim.AdamW``'s update of a whole parameter, state created on first use."""
    if not state:
        state["step"] = torch.tensor(0.0, dtype=torch.float32)
        state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
    state["step"] += 1
    _adamw_update(
        param,
        grad,
        state["exp_avg"],
        state["exp_avg_sq"],
        group,
        *_bias_corrections(group, state["step"].item()),
    )


def _adamw_update(
    values: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    group: Mapping[str, Any],
    neg_step_size: float | Tensor,
    bias_correction2_sqrt: float | Tensor,
) -> None:
    """One AdamW update in place, in the order of operations of torch's ``_single_tensor_adam``
    (non-capturable path), so that results are bit-identical to ``torch.optim.AdamW`` on CPU.

    The bias-correction terms are Python floats (as in torch) or per-element tensors of the
    same values rounded to the parameter's dtype, which is what torch's scalars become.
    """
    lr, eps, weight_decay = group["lr"], group["eps"], group["weight_decay"]
    beta1, beta2 = group["betas"]
    if weight_decay != 0:
        values.mul_(1 - lr * weight_decay)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
    if isinstance(neg_step_size, Tensor):
        # addcdiv_(t1, t2, value=s) computes (s * t1) / t2: form the same product per element.
        values.addcdiv_(neg_step_size.mul_(exp_avg), denom)
    else:
        values.addcdiv_(exp_avg, denom, value=neg_step_size)
