"""SparseAdamW against torch.optim.AdamW: same update on selected elements, none elsewhere (§7)."""

from __future__ import annotations

import copy
import io
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fishertune.optim import SparseAdamW, sparse_adamw
from fishertune.selection import Selection

BETAS = (0.9, 0.999)
EPS = 1e-8


@pytest.fixture(autouse=True, params=["fused kernel", "indexing ops"])
def update_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs twice: with the fused CPU kernel (the default on CPU, required to build
    here) and with torch's indexing ops, the path used where the kernel is unavailable."""
    if request.param == "fused kernel":
        found = sparse_adamw._checked_kernel()
        assert not isinstance(found, str), found
    else:
        monkeypatch.setattr(sparse_adamw, "_checked_kernel", lambda: "disabled by the test")
        monkeypatch.setattr(sparse_adamw, "_warn_kernel_unavailable", lambda reason: None)
    return str(request.param)


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3))


def _loss(model: nn.Module, step: int) -> Tensor:
    """A real classification loss on a fresh batch, so gradients change every step."""
    generator = torch.Generator().manual_seed(1000 + step)
    inputs = torch.randn(16, 6, generator=generator)
    targets = torch.randint(0, 3, (16,), generator=generator)
    return F.cross_entropy(model(inputs), targets)


def _backward(model: nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
    optimizer.zero_grad()
    _loss(model, step).backward()


def _name(param: Tensor) -> str:
    """A name for a tensor, stable for its life (the tests' tensors have no module names)."""
    return f"t{id(param)}"


def _names(params: Iterable[Tensor]) -> dict[str, Tensor]:
    """The ``parameters=`` mapping of the given tensors."""
    return {_name(param): param for param in params}


def _sel(masks: Mapping[Tensor, Tensor]) -> Selection:
    """The selection of the True elements of per-tensor masks."""
    return Selection.from_masks({_name(param): mask for param, mask in masks.items()})


def _nested_masks(
    params: Sequence[Tensor], fractions: Sequence[float], seed: int = 0
) -> list[dict[Tensor, Tensor]]:
    """One mask dict per fraction; each random selection contains the previous one."""
    generator = torch.Generator().manual_seed(seed)
    priorities = [torch.rand(param.shape, generator=generator) for param in params]
    return [
        {param: priority < fraction for param, priority in zip(params, priorities, strict=True)}
        for fraction in fractions
    ]


@dataclass
class _Cohort:
    """Elements of one parameter selected at the same time, tracked by their own dense AdamW."""

    param: Tensor
    indices: Tensor
    reference: nn.Parameter
    optimizer: torch.optim.AdamW


class _CohortReference:
    """The expected behaviour: one ``torch.optim.AdamW`` per cohort of selected elements."""

    def __init__(self) -> None:
        self.cohorts: list[_Cohort] = []

    def add(self, param: Tensor, new_elements: Tensor, lr: float, weight_decay: float) -> None:
        indices = new_elements.reshape(-1).nonzero().view(-1)
        if indices.numel() == 0:
            return
        reference = nn.Parameter(param.detach().reshape(-1)[indices].clone())
        optimizer = torch.optim.AdamW(
            [reference], lr=lr, betas=BETAS, eps=EPS, weight_decay=weight_decay, foreach=False
        )
        self.cohorts.append(_Cohort(param, indices, reference, optimizer))

    def step(self) -> None:
        """Feed each cohort the gradient values the sparse optimiser sees, then step."""
        for cohort in self.cohorts:
            assert cohort.param.grad is not None
            cohort.reference.grad = cohort.param.grad.reshape(-1)[cohort.indices].clone()
            cohort.optimizer.step()

    def scale_lr(self, factor: float) -> None:
        for cohort in self.cohorts:
            for group in cohort.optimizer.param_groups:
                group["lr"] *= factor

    def assert_equal(self) -> None:
        for cohort in self.cohorts:
            actual = cohort.param.detach().reshape(-1)[cohort.indices]
            assert torch.equal(actual, cohort.reference.detach())


def test_matches_adamw_per_cohort_with_growing_masks() -> None:
    model = _mlp()
    w1, b1, w2, b2 = model.parameters()
    initial = {param: param.detach().clone() for param in (w1, b1, w2, b2)}
    groups = [
        {"params": [w1, b1], "lr": 3e-2, "weight_decay": 0.1},
        {"params": [w2, b2]},
    ]
    hyper = {w1: (3e-2, 0.1), b1: (3e-2, 0.1), w2: (1e-2, 0.05)}
    stages = _nested_masks([w1, b1, w2], [0.1, 0.3, 0.6])
    stages[0][b1] = torch.zeros_like(b1, dtype=torch.bool)  # b1 starts with nothing selected
    growth_at = {20: stages[1], 35: stages[2]}

    optimizer = SparseAdamW(
        groups,
        _sel(stages[0]),
        _names(model.parameters()),
        lr=1e-2,
        betas=BETAS,
        eps=EPS,
        weight_decay=0.05,
    )
    expected = _CohortReference()
    for param, mask in stages[0].items():
        expected.add(param, mask, *hyper[param])
    dense_b2 = _CohortReference()
    dense_b2.add(b2, torch.ones_like(b2, dtype=torch.bool), 1e-2, 0.05)
    current = dict(stages[0])

    for step in range(60):
        if step in growth_at:
            optimizer.update_selection(_sel(growth_at[step]))
            for param, mask in growth_at[step].items():
                expected.add(param, mask & ~current[param], *hyper[param])
                current[param] = mask
        if step == 45:  # a scheduler-like lr change mid-run
            for group in optimizer.param_groups:
                group["lr"] *= 0.5
            expected.scale_lr(0.5)
            dense_b2.scale_lr(0.5)
        _backward(model, optimizer, step)
        expected.step()
        dense_b2.step()
        optimizer.step()
        # Bit-identical: the masked update repeats torch's single-tensor operations in order,
        # with the per-element bias corrections computed from the same Python-float values.
        expected.assert_equal()
        dense_b2.assert_equal()
        for param, mask in current.items():
            assert torch.equal(param.detach()[~mask], initial[param][~mask])
    assert all(mask.any() for mask in current.values())
    assert len(expected.cohorts) == 8  # three cohorts each in w1 and w2, two in b1


def test_parameters_without_mask_match_adamw() -> None:
    model = _mlp()
    reference_model = copy.deepcopy(model)
    optimizer = SparseAdamW(model.parameters(), lr=1e-2, weight_decay=0.2)
    reference = torch.optim.AdamW(
        reference_model.parameters(), lr=1e-2, weight_decay=0.2, foreach=False
    )
    for step in range(50):
        for net, opt in ((model, optimizer), (reference_model, reference)):
            _backward(net, opt, step)
            opt.step()
        for param, expected in zip(model.parameters(), reference_model.parameters(), strict=True):
            assert torch.equal(param, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_per_group_lr_and_weight_decay(dtype: torch.dtype) -> None:
    torch.manual_seed(3)
    values = torch.randn(5, 4, dtype=dtype)
    fast = nn.Parameter(values.clone())
    slow = nn.Parameter(values.clone())
    frozen = nn.Parameter(values.clone())
    mask = torch.rand(5, 4) < 0.5
    optimizer = SparseAdamW(
        [
            {"params": [fast], "lr": 0.1, "weight_decay": 0.5},
            {"params": [slow]},
            {"params": [frozen], "lr": 0.0, "weight_decay": 0.0},
        ],
        _sel({fast: mask, slow: mask, frozen: mask}),
        _names([fast, slow, frozen]),
        lr=1e-3,
        weight_decay=0.0,
    )
    expected = _CohortReference()
    expected.add(fast, mask, 0.1, 0.5)
    expected.add(slow, mask, 1e-3, 0.0)
    grown = mask | (torch.rand(5, 4) < 0.5)
    for step in range(20):
        if step == 8:  # from here on two cohorts: per-element bias corrections
            optimizer.update_selection(_sel({fast: grown, slow: grown}))
            expected.add(fast, grown & ~mask, 0.1, 0.5)
            expected.add(slow, grown & ~mask, 1e-3, 0.0)
        gradient = torch.randn(5, 4, dtype=dtype)
        for param in (fast, slow, frozen):
            param.grad = gradient.clone()
        expected.step()
        optimizer.step()
        expected.assert_equal()
    assert len(expected.cohorts) == 4
    assert not torch.equal(fast[grown], slow[grown])
    assert torch.equal(frozen, values)


def test_state_holds_only_selected_elements() -> None:
    model = _mlp()
    w1, b1, w2, b2 = model.parameters()
    small, large = _nested_masks([w1, w2], [0.2, 0.7])
    optimizer = SparseAdamW(model.parameters(), _sel(small), _names(model.parameters()))
    _backward(model, optimizer, 0)
    optimizer.step()
    for masks in (small, large):
        for param, mask in masks.items():
            state = optimizer.state[param]
            nnz = int(mask.sum())
            assert state["indices"].dtype == torch.int32
            assert torch.equal(state["indices"], mask.reshape(-1).nonzero().view(-1).int())
            assert state["step"].dtype == torch.int32
            assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == param.dtype
            for key in ("indices", "step", "exp_avg", "exp_avg_sq"):
                assert state[key].shape == (nnz,)
        optimizer.update_selection(_sel(large))
    for dense in (b1, b2):
        assert optimizer.state[dense]["exp_avg"].shape == dense.shape  # as torch AdamW
    state = optimizer.state[w1]
    assert set(state["step"].unique().tolist()) == {0, 1}  # new elements start from step 0
    assert (state["min_step"], state["max_step"]) == (0, 1)
    _backward(model, optimizer, 1)
    optimizer.step()
    assert set(state["step"].unique().tolist()) == {1, 2}
    assert (state["min_step"], state["max_step"]) == (1, 2)


def test_requires_grad_follows_selection() -> None:
    model = _mlp()
    w1, b1, w2, b2 = model.parameters()
    empty = torch.zeros_like(w1, dtype=torch.bool)
    optimizer = SparseAdamW(
        model.parameters(),
        _sel({w1: empty, w2: torch.ones_like(w2).bool()}),
        _names(model.parameters()),
    )
    assert not w1.requires_grad
    assert all(param.requires_grad for param in (b1, w2, b2))
    before = w1.detach().clone()
    _backward(model, optimizer, 0)
    assert w1.grad is None
    optimizer.step()
    assert torch.equal(w1, before)

    grown = empty.clone()
    grown[0, :3] = True
    optimizer.update_selection(_sel({w1: grown}))
    assert w1.requires_grad
    _backward(model, optimizer, 1)
    assert w1.grad is not None
    optimizer.step()
    changed = w1.detach() != before
    assert torch.equal(changed, grown)


def _train(
    model: nn.Module,
    optimizer: SparseAdamW,
    steps: range,
    growth: dict[int, dict[Tensor, Tensor]],
) -> None:
    for step in steps:
        if step in growth:
            optimizer.update_selection(_sel(growth[step]))
        _backward(model, optimizer, step)
        optimizer.step()


def test_state_dict_round_trip_continues_bit_identically() -> None:
    model = _mlp()
    w1, b1, w2, b2 = model.parameters()
    stages = _nested_masks([w1, b1, w2], [0.0, 0.4, 0.8])
    groups = [{"params": [w1, b1], "lr": 5e-2}, {"params": [w2, b2]}]
    optimizer = SparseAdamW(groups, _sel(stages[0]), _names(model.parameters()), lr=1e-2)
    _train(model, optimizer, range(10), {4: stages[1]})
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)

    restored_model = copy.deepcopy(model)
    rw1, rb1, rw2, rb2 = restored_model.parameters()
    restored = SparseAdamW(  # built with other masks and lr: the loaded state must win
        [{"params": [rw1, rb1]}, {"params": [rw2, rb2]}],
        _sel({rw1: torch.zeros_like(rw1).bool(), rb1: torch.zeros_like(rb1).bool()}),
        _names(restored_model.parameters()),
        lr=1e-2,
    )
    buffer.seek(0)
    restored.load_state_dict(torch.load(buffer))
    assert rw1.requires_grad
    assert rb1.requires_grad
    saved, loaded = optimizer.state_dict(), restored.state_dict()
    assert saved["param_groups"] == loaded["param_groups"]
    assert saved["state"].keys() == loaded["state"].keys()
    for param_id, state in saved["state"].items():
        assert state.keys() == loaded["state"][param_id].keys()
        for key, value in state.items():
            other = loaded["state"][param_id][key]
            if isinstance(value, Tensor):
                assert value.dtype == other.dtype
                assert torch.equal(value, other)
            else:
                assert value == other
    assert loaded["state"][0]["indices"].dtype == torch.int32

    restored_last = dict(zip([rw1, rb1, rw2], stages[2].values(), strict=True))
    _train(model, optimizer, range(10, 25), {15: stages[2]})
    _train(restored_model, restored, range(10, 25), {15: restored_last})
    for param, other in zip(model.parameters(), restored_model.parameters(), strict=True):
        assert torch.equal(param, other)


def _param() -> nn.Parameter:
    return nn.Parameter(torch.zeros(2, 3))


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (
            lambda p: SparseAdamW(
                [p],
                _sel({(other := torch.zeros(2, 3)): torch.ones(2, 3, dtype=torch.bool)}),
                _names([other]),
            ),
            ValueError,
            r"tensor of shape \(2, 3\) that is not a parameter of this optimiser",
        ),
        (
            lambda p: SparseAdamW(
                [p], Selection({_name(p): torch.tensor([0])}, {_name(p): (3,)}), _names([p])
            ),
            ValueError,
            r"of shape \(3,\) does not match the parameter \(tensor of shape \(2, 3\)\)",
        ),
        (
            lambda p: SparseAdamW([p], _sel({p: torch.ones(2, 3)}), _names([p])),
            TypeError,
            r"must be a bool tensor, got torch.float32",
        ),
        (
            lambda p: SparseAdamW([p], _sel({p: [[True] * 3] * 2}), _names([p])),  # type: ignore[dict-item]
            TypeError,
            r"must be a bool tensor, got list",
        ),
        (lambda p: SparseAdamW([p], lr=-1.0), ValueError, r"invalid lr: -1.0"),
        (lambda p: SparseAdamW([p], lr="0.1"), TypeError, r"lr must be a real number"),
        (lambda p: SparseAdamW([p], eps=-1e-8), ValueError, r"invalid eps"),
        (lambda p: SparseAdamW([p], weight_decay=-0.1), ValueError, r"invalid weight_decay"),
        (lambda p: SparseAdamW([p], betas=(1.0, 0.9)), ValueError, r"invalid betas\[0\]"),
        (lambda p: SparseAdamW([p], betas=(0.9, -0.1)), ValueError, r"invalid betas\[1\]"),
        (lambda p: SparseAdamW([p], betas=(0.9,)), TypeError, r"betas must be a pair"),
        (
            lambda p: SparseAdamW([{"params": [p], "lr": -0.5}]),
            ValueError,
            r"invalid lr: -0.5",
        ),
        (
            lambda p: SparseAdamW([p], None, _names([p])).update_selection(
                _sel({p: torch.ones(2, 3, dtype=torch.bool)})
            ),
            ValueError,
            r"\(tensor of shape \(2, 3\)\) has no selection and updates densely",
        ),
    ],
)
def test_errors(
    build: Callable[[nn.Parameter], object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        build(_param())


def test_rejects_non_floating_masked_parameter() -> None:
    param = nn.Parameter(torch.zeros(2, 3, dtype=torch.int64), requires_grad=False)
    with pytest.raises(TypeError, match=r"\(tensor of shape \(2, 3\)\) must be real floating"):
        SparseAdamW([param], _sel({param: torch.ones(2, 3, dtype=torch.bool)}), _names([param]))


def test_non_contiguous_parameter_uses_row_major_indices() -> None:
    torch.manual_seed(4)
    param = nn.Parameter(torch.randn(4, 5).t())  # shape (5, 4), column-major storage
    assert not param.is_contiguous()
    initial = param.detach().clone()
    mask = torch.rand(5, 4) < 0.5
    optimizer = SparseAdamW([param], _sel({param: mask}), _names([param]), lr=1e-2)
    expected = _CohortReference()
    expected.add(param, mask, 1e-2, 1e-2)
    for _ in range(10):
        param.grad = torch.randn(5, 4)
        expected.step()
        optimizer.step()
        expected.assert_equal()
    assert torch.equal(param.detach()[~mask], initial[~mask])


def test_update_selection_rejects_shrinking_and_changes_nothing() -> None:
    model = _mlp()
    w1, _, w2, _ = model.parameters()
    small, large = _nested_masks([w1, w2], [0.3, 0.6])
    optimizer = SparseAdamW(model.parameters(), _sel(large), _names(model.parameters()))
    before = copy.deepcopy(optimizer.state_dict())
    shrunk = {w1: large[w1], w2: small[w2]}
    shrunk[w1] = large[w1] | (torch.rand(w1.shape) < 0.5)  # a valid growth for w1...
    with pytest.raises(ValueError, match=r"selections may only grow.*tensor of shape \(3, 12\)"):
        optimizer.update_selection(_sel(shrunk))  # ...but w2 shrinks, so nothing may change
    after = optimizer.state_dict()
    for param_id, state in before["state"].items():
        for key, value in state.items():
            if isinstance(value, Tensor):
                assert torch.equal(after["state"][param_id][key], value)


def test_step_with_closure_and_under_no_grad() -> None:
    model = _mlp()
    w1 = model[0].weight
    optimizer = SparseAdamW(model.parameters(), _sel({w1: w1 > 0}), _names([w1]))

    def closure() -> float:
        optimizer.zero_grad()
        loss = _loss(model, 0)
        loss.backward()
        return loss.item()

    expected = _loss(copy.deepcopy(model), 0).item()
    assert optimizer.step(closure) == expected
    _backward(model, optimizer, 1)
    with torch.no_grad():
        optimizer.step()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    cpu_model = _mlp()
    cuda_model = copy.deepcopy(cpu_model).cuda()
    cpu_masks, cpu_grown = _nested_masks([cpu_model[0].weight, cpu_model[2].weight], [0.3, 0.6])
    cuda_params = [cuda_model[0].weight, cuda_model[2].weight]
    cuda_masks = [dict(zip(cuda_params, m.values(), strict=True)) for m in (cpu_masks, cpu_grown)]
    cpu_opt = SparseAdamW(
        cpu_model.parameters(), _sel(cpu_masks), _names(cpu_model.parameters()), lr=1e-2
    )
    cuda_opt = SparseAdamW(
        cuda_model.parameters(), _sel(cuda_masks[0]), _names(cuda_model.parameters()), lr=1e-2
    )
    for step in range(30):
        if step == 10:
            cpu_opt.update_selection(_sel(cpu_grown))
            cuda_opt.update_selection(_sel(cuda_masks[1]))
        for net, opt in ((cpu_model, cpu_opt), (cuda_model, cuda_opt)):
            opt.zero_grad()
            generator = torch.Generator().manual_seed(step)
            inputs = torch.randn(16, 6, generator=generator)
            targets = torch.randint(0, 3, (16,), generator=generator)
            device = next(net.parameters()).device
            F.cross_entropy(net(inputs.to(device)), targets.to(device)).backward()
            opt.step()
    assert cuda_opt.state[cuda_params[0]]["indices"].device.type == "cuda"
    for param, other in zip(cpu_model.parameters(), cuda_model.parameters(), strict=True):
        # CUDA kernels round differently (e.g. division by a scalar as a reciprocal multiply).
        torch.testing.assert_close(other.cpu(), param, rtol=0, atol=1e-5)


def test_holds_the_selections_own_index_tensors() -> None:
    model = _mlp()
    w1 = model[0].weight
    selection = _sel({w1: w1 > 0})
    optimizer = SparseAdamW(model.parameters(), selection, _names(model.parameters()))
    assert optimizer.state[w1]["indices"] is selection[_name(w1)]
    grown = _sel({w1: w1 > -0.1})
    optimizer.update_selection(grown)
    assert optimizer.state[w1]["indices"] is grown[_name(w1)]
    assert optimizer.selection[_name(w1)] is grown[_name(w1)]
