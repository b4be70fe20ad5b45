"""SparseAdamW's fused CPU kernel against its torch indexing-ops path: the same bits (§7)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from fishertune.optim import SparseAdamW, sparse_adamw, sparse_adamw_kernel
from fishertune.selection import Selection


def _problem(seed: int) -> tuple[list[nn.Parameter], list[dict[str, torch.Tensor]]]:
    """float32 and float64 tensors, large enough for several threads and chunks, and two
    nested random selections of each: 30% then 50%, except 2% then 3.3% of the last tensor
    (chunks whose elements rarely share a cache line)."""
    generator = torch.Generator().manual_seed(seed)
    shapes = [(300, 200), (777,), (64, 3, 5), (300, 200), (33,), (600, 500)]
    dtypes = [torch.float32] * 3 + [torch.float64] * 2 + [torch.float32]
    params = [
        nn.Parameter(torch.randn(shape, generator=generator, dtype=dtype) * 0.1)
        for shape, dtype in zip(shapes, dtypes, strict=True)
    ]
    ranks = [torch.rand(shape, generator=generator) for shape in shapes]
    ranks[-1] *= 15
    masks = [{f"p{i}": rank < share for i, rank in enumerate(ranks)} for share in (0.3, 0.5)]
    return params, masks


def _train(fused: bool, steps: int = 12) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    params, masks = _problem(0)
    groups = [
        {"params": params[:3], "betas": (0.3, 0.99), "weight_decay": 0.0},  # lerp's other branch
        {"params": params[3:]},
    ]
    named = {f"p{i}": param for i, param in enumerate(params)}
    optimizer = SparseAdamW(
        groups, Selection.from_masks(masks[0]), named, lr=0.02, weight_decay=0.1, fused=fused
    )
    generator = torch.Generator().manual_seed(1)
    for step in range(steps):
        for param in params:
            param.grad = torch.randn(param.shape, generator=generator, dtype=param.dtype)
            param.grad.mul_(10.0 ** -(step % 4))
        optimizer.step()
        if step == 4:
            optimizer.update_selection(Selection.from_masks(masks[1]))
    states = [dict(optimizer.state[param]) for param in params]
    return [param.detach().clone() for param in params], states


def test_kernel_equals_indexing_ops_bit_for_bit() -> None:
    fused_params, fused_states = _train(fused=True)
    plain_params, plain_states = _train(fused=False)
    for fused, plain in zip(fused_params, plain_params, strict=True):
        assert torch.equal(fused, plain)
    for fused_state, plain_state in zip(fused_states, plain_states, strict=True):
        assert fused_state.keys() == plain_state.keys()
        for key, value in fused_state.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, plain_state[key]), key
            else:
                assert value == plain_state[key], key


def _spy_on_updates(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record how many tensors each call of the kernel receives."""
    calls: list[int] = []
    original: Callable[..., None] = sparse_adamw.run_update

    def spy(kernel: Any, tensors: Any, *args: Any, **kwargs: Any) -> None:
        calls.append(len(tensors))
        original(kernel, tensors, *args, **kwargs)

    monkeypatch.setattr(sparse_adamw, "run_update", spy)
    return calls


def test_kernel_is_the_default_and_skips_what_it_cannot_index(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = _spy_on_updates(monkeypatch)
    contiguous = nn.Parameter(torch.randn(6, 7))
    transposed = nn.Parameter(torch.randn(7, 6).t())  # column-major: flat index != offset
    half = nn.Parameter(torch.randn(6, 7).to(torch.bfloat16))
    named = {"a": contiguous, "b": transposed, "c": half}
    mask = torch.rand(6, 7, generator=torch.Generator().manual_seed(0)) < 0.5
    optimizer = SparseAdamW(
        list(named.values()), Selection.from_masks({n: mask for n in named}), named
    )
    before = {name: param.detach().clone() for name, param in named.items()}
    for param in named.values():
        param.grad = torch.ones_like(param)
    optimizer.step()
    assert calls == [1]  # one call, for the contiguous float32 tensor only
    for name, param in named.items():  # the other two were updated by torch's indexing ops
        assert not torch.equal(param.detach()[mask], before[name][mask])
        assert torch.equal(param.detach()[~mask], before[name][~mask])


def test_unavailable_kernel_raises_when_required_and_warns_once_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sparse_adamw, "_checked_kernel", lambda: "no C compiler found")
    sparse_adamw._warn_kernel_unavailable.cache_clear()
    param = nn.Parameter(torch.randn(5, 4))
    selection = Selection.from_masks({"w": torch.ones(5, 4, dtype=torch.bool)})
    param.grad = torch.randn(5, 4)
    required = SparseAdamW([param], selection, {"w": param}, fused=True)
    with pytest.raises(RuntimeError, match=r"fused=True\): no C compiler found"):
        required.step()
    with pytest.warns(RuntimeWarning, match="fused CPU kernel not used, no C compiler found"):
        SparseAdamW([param], selection, {"w": param}).step()
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        SparseAdamW([param], selection, {"w": param}).step()
    assert not records  # warned once per process
    sparse_adamw._warn_kernel_unavailable.cache_clear()


def test_fused_must_be_a_bool_or_none() -> None:
    param = nn.Parameter(torch.randn(3))
    with pytest.raises(TypeError, match="fused must be True, False or None, got 'yes'"):
        SparseAdamW([param], fused="yes")  # type: ignore[arg-type]


def test_compiles_once_into_the_cache_atomically(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FISHERTUNE_CACHE", str(tmp_path))
    library = sparse_adamw_kernel.kernel_library.__wrapped__()
    assert not isinstance(library, str), library
    built = sorted(path.name for path in tmp_path.iterdir())
    assert len(built) == 1
    assert built[0].startswith("sparse_adamw_kernel-")
    assert built[0].endswith(".so")
    stamp = (tmp_path / built[0]).stat().st_mtime_ns
    assert not isinstance(sparse_adamw_kernel.kernel_library.__wrapped__(), str)
    assert (tmp_path / built[0]).stat().st_mtime_ns == stamp  # loaded, not rebuilt


@pytest.mark.parametrize(
    ("compiler", "reason"),
    [
        ("/nonexistent/cc", "no C compiler found"),
        ("false", "the kernel could not be built or loaded"),
    ],
)
def test_reports_why_the_kernel_is_unavailable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, compiler: str, reason: str
) -> None:
    monkeypatch.setenv("FISHERTUNE_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", compiler)
    found = sparse_adamw_kernel.kernel_library.__wrapped__()
    assert isinstance(found, str)
    assert reason in found
    assert not list(tmp_path.glob("*.partial"))


def test_check_rejects_a_kernel_that_differs(monkeypatch: pytest.MonkeyPatch) -> None:
    original: Callable[..., None] = sparse_adamw.run_update

    def off_by_eps(*args: Any, **kwargs: Any) -> None:
        original(*args, **{**kwargs, "eps": kwargs["eps"] * 2})

    monkeypatch.setattr(sparse_adamw, "run_update", off_by_eps)
    found = sparse_adamw._checked_kernel.__wrapped__()
    assert isinstance(found, str)
    assert "differs from torch's" in found
    monkeypatch.undo()
    assert not isinstance(sparse_adamw._checked_kernel.__wrapped__(), str)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_square_root_is_torchs_own(dtype: torch.dtype) -> None:
    kernel = sparse_adamw_kernel.kernel_library()
    assert not isinstance(kernel, str), kernel
    probe = sparse_adamw_kernel._probe(dtype)
    assert (probe < torch.finfo(dtype).smallest_normal).sum() > 100  # subnormals probed
    result = torch.empty_like(probe)
    sparse_adamw_kernel.ROOT_FUNCTION(kernel.roots[dtype].address)(
        probe.numel(), probe.data_ptr(), result.data_ptr()
    )
    assert torch.equal(result, torch.sqrt(probe))


def test_only_a_square_root_with_torchs_bits_is_used(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without torch's own square roots only the correctly rounded one is left: it is used
    for a dtype exactly when torch.sqrt is correctly rounded there."""
    monkeypatch.setenv("FISHERTUNE_CACHE", str(tmp_path))
    monkeypatch.setattr(
        sparse_adamw_kernel,
        "_torch_square_roots",
        lambda: {torch.float32: [], torch.float64: []},
    )
    found = sparse_adamw_kernel.kernel_library.__wrapped__()
    correct = {}
    for dtype in (torch.float32, torch.float64):
        probe = sparse_adamw_kernel._probe(dtype)
        rounded = torch.from_numpy(np.sqrt(probe.numpy()))  # numpy's: the IEEE operation
        correct[dtype] = torch.equal(torch.sqrt(probe), rounded)
    if isinstance(found, str):
        assert not any(correct.values())
        assert "no square root" in found
    else:
        assert set(found.roots) == {dtype for dtype, same in correct.items() if same}
        assert {root.name for root in found.roots.values()} == {"the correctly rounded sqrt"}


def test_status_line_says_whether_the_kernel_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    assert sparse_adamw.fused_kernel_status().startswith("compiled and checked (square root ")
    monkeypatch.setattr(sparse_adamw, "_checked_kernel", lambda: "no C compiler found")
    assert sparse_adamw.fused_kernel_status() == (
        "not used: no C compiler found; torch's indexing ops instead"
    )


def test_kernel_is_not_built_for_parameters_it_could_not_update(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run whose selected parameters the kernel cannot take (GPU tensors, or here a
    column-major one) never compiles or checks it, so never warns about it either."""

    def fail() -> None:
        raise AssertionError("the kernel was resolved")

    monkeypatch.setattr(sparse_adamw, "_checked_kernel", fail)
    param = nn.Parameter(torch.randn(7, 6).t())
    optimizer = SparseAdamW(
        [param], Selection.from_masks({"w": torch.ones(6, 7, dtype=torch.bool)}), {"w": param}
    )
    param.grad = torch.randn(6, 7)
    optimizer.step()
