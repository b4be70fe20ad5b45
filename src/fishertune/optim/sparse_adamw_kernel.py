"""SparseAdamW's fused CPU kernel: compiled on first use, called through ctypes.

torch offers no fused gather-update-scatter: updating the selected elements with its indexing
ops costs two gathers and one scatter, each about as slow per selected element as a whole
dense AdamW pass per element (docs/performance.md). ``sparse_adamw_kernel.c`` does the update
in two passes that read the gradient once and read-modify-write the parameter once at the
selected indices. It is compiled with the system's C compiler (``$CC``, else ``cc``) into the
user's cache directory the first time a SparseAdamW steps on CPU, keyed by a hash of the source,
compiler and flags, and written atomically so that concurrent processes (torchrun) agree.
Without a compiler, or if the compiled kernel does not reproduce torch's update bit for bit
(``SparseAdamW`` checks once per process), the optimiser keeps using torch's indexing ops.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["KERNEL_DTYPES", "KernelTensor", "kernel_library", "kernel_structs", "run_pass"]

SOURCE = Path(__file__).with_name("sparse_adamw_kernel.c")
FLAGS = ("-O3", "-fPIC", "-shared", "-ffp-contract=off", "-fno-math-errno", "-fopenmp")
KERNEL_DTYPES = (torch.float32, torch.float64)
COMPILE_TIMEOUT_S = 120


class _SparseTensor(ctypes.Structure):
    """The C ``sparse_tensor``: one selected parameter's pointers and element count."""

    _fields_ = [
        ("param", ctypes.c_void_p),
        ("grad", ctypes.c_void_p),
        ("exp_avg", ctypes.c_void_p),
        ("exp_avg_sq", ctypes.c_void_p),
        ("root", ctypes.c_void_p),
        ("step", ctypes.c_void_p),
        ("index", ctypes.c_void_p),
        ("count", ctypes.c_int64),
    ]


@dataclass(frozen=True)
class KernelTensor:
    """One selected parameter as the kernel sees it; every tensor contiguous, on the CPU.

    ``root`` receives ``sqrt(exp_avg_sq)`` between the two passes.
    """

    param: Tensor
    grad: Tensor
    exp_avg: Tensor
    exp_avg_sq: Tensor
    root: Tensor
    step: Tensor
    index: Tensor


def cache_directory() -> Path:
    """Where compiled kernels are kept: ``$FISHERTUNE_CACHE``, else the XDG cache directory."""
    explicit = os.environ.get("FISHERTUNE_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fishertune"


def _compiler() -> str | None:
    given = os.environ.get("CC")
    if given:
        return shutil.which(given)
    return shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def _compile(compiler: str, target: Path) -> None:
    """Compile the kernel into ``target`` atomically; raise OSError with the compiler's last
    line if it fails."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, suffix=".so.partial")
    os.close(handle)
    try:
        result = subprocess.run(
            [compiler, *FLAGS, str(SOURCE), "-o", temporary, "-lm"],
            capture_output=True,
            text=True,
            timeout=COMPILE_TIMEOUT_S,
            check=False,
        )
        if result.returncode != 0:
            lines = (result.stderr or result.stdout).strip().splitlines()
            raise OSError(f"{compiler} failed: {lines[-1] if lines else 'no message'}")
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


@functools.cache
def kernel_library() -> ctypes.CDLL | str:
    """The loaded kernel, compiled if not cached yet, or the reason it is unavailable."""
    compiler = _compiler()
    if compiler is None:
        return "no C compiler found (set CC or install cc)"
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), compiler.encode(), " ".join(FLAGS).encode()):
        key.update(part)
    key.update(platform.machine().encode())
    target = cache_directory() / f"sparse_adamw_kernel-{key.hexdigest()[:16]}.so"
    try:
        if not target.is_file():
            _compile(compiler, target)
        library = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as error:
        return f"the kernel could not be built or loaded ({error})"
    function = library.sparse_adamw_pass
    function.restype = None
    function.argtypes = [
        ctypes.POINTER(_SparseTensor),
        ctypes.c_int64,
        ctypes.c_int,  # pass: 1 moments, 2 apply
        ctypes.c_int,  # is_double
        ctypes.c_double,  # 1 - beta1
        ctypes.c_double,  # beta2
        ctypes.c_double,  # 1 - beta2
        ctypes.c_void_p,  # -lr / (1 - beta1^k) table
        ctypes.c_void_p,  # sqrt(1 - beta2^k) table
        ctypes.c_double,  # 1 - lr * weight_decay
        ctypes.c_int,  # apply weight decay
        ctypes.c_double,  # eps
        ctypes.c_int,  # every element has the same step
        ctypes.c_int,  # threads
    ]
    return library


def kernel_structs(tensors: Sequence[KernelTensor]) -> ctypes.Array[_SparseTensor]:
    """The C descriptions of ``tensors``, built once per step and shared by both passes."""
    array = (_SparseTensor * len(tensors))()
    for entry, tensor in zip(array, tensors, strict=True):
        entry.param = tensor.param.data_ptr()
        entry.grad = tensor.grad.data_ptr()
        entry.exp_avg = tensor.exp_avg.data_ptr()
        entry.exp_avg_sq = tensor.exp_avg_sq.data_ptr()
        entry.root = tensor.root.data_ptr()
        entry.step = tensor.step.data_ptr()
        entry.index = tensor.index.data_ptr()
        entry.count = tensor.index.numel()
    return array


def run_pass(
    library: ctypes.CDLL,
    structs: ctypes.Array[_SparseTensor],
    dtype: torch.dtype,
    *,
    moments: bool,
    betas: tuple[float, float],
    neg_step_size: Tensor,
    bias_correction2_sqrt: Tensor,
    decay: float | None,
    eps: float,
    uniform: bool,
) -> None:
    """Run the moments pass (``moments=True``) or the apply pass over the tensors described by
    ``structs``, which have ``dtype``; the step tables (indexed by each
    element's step) have that dtype too. ``decay`` is ``1 - lr * weight_decay``, or None;
    ``uniform`` says that every element has the same step (the tables are then read once)."""
    beta1, beta2 = betas
    library.sparse_adamw_pass(
        structs,
        len(structs),
        1 if moments else 2,
        int(dtype == torch.float64),
        1 - beta1,
        beta2,
        1 - beta2,
        neg_step_size.data_ptr(),
        bias_correction2_sqrt.data_ptr(),
        1.0 if decay is None else decay,
        int(decay is not None),
        eps,
        int(uniform),
        torch.get_num_threads(),
    )
