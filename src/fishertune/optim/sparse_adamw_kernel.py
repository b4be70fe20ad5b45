"""SparseAdamW's fused CPU kernel: compiled on first use, called through ctypes.

torch offers no fused gather-update-scatter: updating the selected elements with its indexing
ops costs two gathers and one scatter, each about as slow per selected element as a whole
dense AdamW pass per element (docs/performance.md). ``sparse_adamw_kernel.c`` does the update
in one pass that reads the gradient once and read-modify-writes the parameter once at the
selected indices. It is compiled with the system's C compiler (``$CC``, else ``cc``) into the
user's cache directory the first time a SparseAdamW steps on CPU, keyed by a hash of the source,
compiler and flags, and written atomically so that concurrent processes (torchrun) agree.

The update's one non-elementary operation is the square root, and torch's is not always the
correctly rounded one (x86 builds use MKL's ``vsSqrt``/``vdSqrt``, up to 1 ulp off): the
kernel takes the square root as a function and uses, per dtype, the first candidate that gives
``torch.sqrt``'s bits on a probe (MKL's from torch's own library, then the correctly rounded
one). Without a compiler or a matching square root, or if the compiled kernel does not
reproduce the indexing-ops update bit for bit (``SparseAdamW`` checks once per process), the
optimiser keeps using torch's indexing ops.
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
from typing import Any, NamedTuple

import torch
from torch import Tensor

__all__ = ["Kernel", "KernelTensor", "SquareRoot", "kernel_library", "run_update"]

SOURCE = Path(__file__).with_name("sparse_adamw_kernel.c")
FLAGS = ("-O3", "-fPIC", "-shared", "-ffp-contract=off", "-fno-math-errno", "-fopenmp")
COMPILE_TIMEOUT_S = 120
ROOT_FUNCTION = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p)


class _SparseTensor(ctypes.Structure):
    """The C ``sparse_tensor``: one selected parameter's pointers and element count."""

    _fields_ = [
        ("param", ctypes.c_void_p),
        ("grad", ctypes.c_void_p),
        ("exp_avg", ctypes.c_void_p),
        ("exp_avg_sq", ctypes.c_void_p),
        ("step", ctypes.c_void_p),
        ("index", ctypes.c_void_p),
        ("count", ctypes.c_int64),
    ]


class KernelTensor(NamedTuple):
    """One selected parameter as the kernel sees it; every tensor contiguous, on the CPU."""

    param: Tensor
    grad: Tensor
    exp_avg: Tensor
    exp_avg_sq: Tensor
    step: Tensor
    indices: Tensor


class SquareRoot(NamedTuple):
    """A C function ``r[0:n] = sqrt(a[0:n])``: where it comes from, and its address."""

    name: str
    address: int


@dataclass(frozen=True)
class Kernel:
    """The loaded kernel and, per dtype it serves, the square root it uses."""

    library: ctypes.CDLL
    roots: dict[torch.dtype, SquareRoot]


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


def _torch_square_roots() -> dict[torch.dtype, list[SquareRoot]]:
    """MKL's 64-bit-length vector square roots, where torch's CPU library exports them."""
    found: dict[torch.dtype, list[SquareRoot]] = {torch.float32: [], torch.float64: []}
    for path in sorted((Path(torch.__file__).parent / "lib").glob("libtorch_cpu.*")):
        try:
            library = ctypes.CDLL(str(path))
        except OSError:
            continue
        for dtype, name in ((torch.float32, "vsSqrt_64"), (torch.float64, "vdSqrt_64")):
            if hasattr(library, name):
                found[dtype].append(SquareRoot(f"torch's {name}", _address(getattr(library, name))))
    return found


def _address(function: Any) -> int:
    address = ctypes.cast(function, ctypes.c_void_p).value
    assert address is not None
    return address


def _probe(dtype: torch.dtype) -> Tensor:
    """Non-negative values over the dtype's whole exponent range, zero and subnormals."""
    generator = torch.Generator().manual_seed(0)
    info = torch.finfo(dtype)
    exponents = torch.linspace(
        float(torch.log10(torch.tensor(info.smallest_normal, dtype=torch.float64))) - 3,
        float(torch.log10(torch.tensor(info.max, dtype=torch.float64))) - 1,
        1 << 15,
        dtype=torch.float64,
    )
    values = torch.rand(exponents.shape, generator=generator, dtype=torch.float64)
    probe = (values * 10.0**exponents).to(dtype)
    return torch.cat([probe, torch.tensor([0.0, 1.0, 4.0], dtype=dtype)])


def _matching_roots(library: ctypes.CDLL) -> dict[torch.dtype, SquareRoot]:
    """Per dtype, the first candidate square root giving ``torch.sqrt``'s bits on the probe."""
    candidates = _torch_square_roots()
    for dtype, suffix in ((torch.float32, "f32"), (torch.float64, "f64")):
        function = getattr(library, f"correctly_rounded_sqrt_{suffix}")
        candidates[dtype].append(SquareRoot("the correctly rounded sqrt", _address(function)))
    roots: dict[torch.dtype, SquareRoot] = {}
    for dtype, functions in candidates.items():
        probe = _probe(dtype)
        expected = torch.sqrt(probe)
        for root in functions:
            result = torch.empty_like(probe)
            ROOT_FUNCTION(root.address)(probe.numel(), probe.data_ptr(), result.data_ptr())
            if torch.equal(result, expected):
                roots[dtype] = root
                break
    return roots


@functools.cache
def kernel_library() -> Kernel | str:
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
    function = library.sparse_adamw_update
    function.restype = None
    function.argtypes = [
        ctypes.POINTER(_SparseTensor),
        ctypes.c_int64,
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
        ctypes.c_void_p,  # the square root
        ctypes.c_int,  # threads
    ]
    roots = _matching_roots(library)
    if not roots:
        return "no square root available to C gives torch.sqrt's results on this machine"
    return Kernel(library, roots)


def _structs(tensors: Sequence[KernelTensor]) -> ctypes.Array[_SparseTensor]:
    """The C descriptions of ``tensors``."""
    array = (_SparseTensor * len(tensors))()
    for entry, tensor in zip(array, tensors, strict=True):
        entry.param = tensor.param.data_ptr()
        entry.grad = tensor.grad.data_ptr()
        entry.exp_avg = tensor.exp_avg.data_ptr()
        entry.exp_avg_sq = tensor.exp_avg_sq.data_ptr()
        entry.step = tensor.step.data_ptr()
        entry.index = tensor.indices.data_ptr()
        entry.count = tensor.indices.numel()
    return array


def run_update(
    kernel: Kernel,
    tensors: Sequence[KernelTensor],
    dtype: torch.dtype,
    *,
    betas: tuple[float, float],
    neg_step_size: Tensor,
    bias_correction2_sqrt: Tensor,
    decay: float | None,
    eps: float,
    uniform: bool,
) -> None:
    """One AdamW step of the selected elements of ``tensors``, which have ``dtype`` (one the
    kernel serves); the step tables (indexed by each element's step) have that dtype too.
    ``decay`` is ``1 - lr * weight_decay``, or None; ``uniform`` says that every element has
    the same step (the tables are then read once)."""
    beta1, beta2 = betas
    kernel.library.sparse_adamw_update(
        _structs(tensors),
        len(tensors),
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
        kernel.roots[dtype].address,
        torch.get_num_threads(),
    )
