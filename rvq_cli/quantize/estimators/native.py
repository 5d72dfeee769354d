"""The rotation-family and reflection gradients for short rows (D ≤ 8) on the CPU, from the C loops
in ``lowdim.c``: built once per machine with the system C compiler (the one torch.compile needs on
the CPU anyway), cached, and called through ctypes, which releases the GIL so that large inputs
run in row chunks on torch's thread count.

Why: torch.compile turns the kernels of :mod:`.kernels` into one loop over rows that it does not
vectorise when a row is this short, so at D = 3 the gradient cost about ten times the textbook STE
expression; compiled from C with D fixed, the loop runs 8–16 rows per vector instruction
(docs/benchmarks.md, "The rotation estimator alone").

The library goes to ``$RVQ_CACHE/native`` (else ``$XDG_CACHE_HOME/rvq/native``, else
``~/.cache/rvq/native``) under a name that hashes the source, the compiler, its flags and the CPU's
feature flags (Linux builds for the CPU at hand, -march=native; elsewhere, where those flags are
not read, for the compiler's default target), so a cache shared between machines never hands one
CPU another's instructions. Where no compiler is found or the build fails, :func:`library` returns
None and the kernels run in torch as before; :func:`status` says which and why."""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor

from ...files import atomic_path, user_cache

__all__ = ["MAX_DIM", "library", "reflection_vjp", "rotation_vjp", "status", "supports"]

MAX_DIM = 8  # lowdim.c has loops for D = 1 … 8; from D = 16 the compiled torch kernel is as fast
SOURCE = Path(__file__).with_name("lowdim.c")
# -ffp-contract=off: no fused multiply-adds, the torch kernels' rounding; -fno-math-errno and
# -fno-trapping-math let the compiler vectorise sqrt and the fallback selects (results unchanged)
FLAGS = ("-O3", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off", "-shared", "-fPIC")
_CHUNK_ROWS = 1 << 16  # rows per thread, at least: below this one thread is faster than handing off
_why_not = ""


def _compiler() -> list[str] | None:
    """The C compiler's command line: $CC (which may carry words, "ccache gcc"), else cc, gcc, clang."""
    if os.environ.get("CC", "").strip():
        return shlex.split(os.environ["CC"])
    found = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    return [found] if found else None


def _cpu_flags() -> str:
    """The CPU's feature flags (Linux), else what the platform module knows (elsewhere the build
    is for the compiler's default target, not -march=native)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()}"


def _cache_dir() -> Path:
    root = os.environ.get("RVQ_CACHE")
    return (Path(root).expanduser() if root else user_cache("rvq")) / "native"


class _BuildFailed(Exception):
    pass


def _run_quietly(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout)


def _build(cc: list[str], out: Path) -> str:
    """Compile lowdim.c to ``out`` (on Linux -march=native first, then the compiler's default
    target); '' on success, else the compiler's complaint. Nothing is left at ``out`` when it fails."""
    problem = ""
    arches = (("-march=native",), ()) if sys.platform.startswith("linux") else ((),)
    for arch in arches:
        try:
            with atomic_path(out, suffix=".so") as tmp:
                try:
                    run = _run_quietly([*cc, *arch, *FLAGS, str(SOURCE), "-o", str(tmp)], timeout=120)
                except (OSError, subprocess.TimeoutExpired) as err:
                    raise _BuildFailed(f"{cc[0]} did not run ({err})") from None
                if run.returncode:
                    last = (run.stderr or run.stdout).strip().splitlines()
                    raise _BuildFailed(f"{cc[0]} failed: {last[-1] if last else f'exit status {run.returncode}'}")
            return ""
        except _BuildFailed as err:
            problem = str(err)
    return problem


def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    rows = [ctypes.c_void_p] * 4 + [ctypes.c_int64, ctypes.c_int]
    lib.rvq_rotation_vjp.argtypes = rows + [ctypes.c_int, ctypes.c_float, ctypes.c_int]
    lib.rvq_reflection_vjp.argtypes = rows
    lib.rvq_rotation_vjp.restype = lib.rvq_reflection_vjp.restype = ctypes.c_int
    return lib


@functools.cache
def library() -> ctypes.CDLL | None:
    """The built library (built on first call), or None where it cannot be built or loaded."""
    global _why_not
    if os.environ.get("RVQ_NATIVE", "1").lower() in ("0", "false", "no", "off"):
        _why_not = "turned off by RVQ_NATIVE=0"
        return None
    if sys.platform == "win32":
        _why_not = "not built on Windows"
        return None
    cc = _compiler()
    if cc is None:
        _why_not = "no C compiler found (set CC, or install gcc or clang)"
        return None
    try:
        version = _run_quietly([*cc, "--version"], timeout=30)
        source = SOURCE.read_text()
    except (OSError, subprocess.TimeoutExpired) as err:
        _why_not = f"the C compiler {cc[0]} did not run, or {SOURCE.name} is missing ({err})"
        return None
    if version.returncode:
        _why_not = f"the C compiler {cc[0]} does not run (exit status {version.returncode} for --version)"
        return None
    key = hashlib.sha256("\0".join([source, *cc, version.stdout, " ".join(FLAGS), _cpu_flags()]).encode())
    try:
        path = _cache_dir() / f"lowdim-{key.hexdigest()[:16]}.so"
        for _attempt in (0, 1):  # a file in the cache that does not load is built again, once
            problem = "" if path.exists() else _build(cc, path)
            if problem:
                break
            try:
                return _load(path)
            except (OSError, AttributeError) as err:
                problem = f"could not load {path} ({err}); set RVQ_CACHE to a folder on another file system"
                path.unlink(missing_ok=True)
    except (OSError, RuntimeError) as err:  # an unwritable cache, no home folder
        problem = f"no cache folder to build in ({err}); set RVQ_CACHE to a writable folder"
    _why_not = problem
    return None


def status() -> str:
    """'in use' (building the library if needed), or why the torch kernels run instead."""
    return "in use" if library() is not None else _why_not


def supports(*tensors: Tensor) -> bool:
    """Whether these (N, D) tensors can go to the C loops: plain fp32 tensors on the CPU (no
    subclass, no pending negation, none that autograd would need to differentiate through),
    D ≤ MAX_DIM, not inside a torch.compile trace, and the library built."""
    t = tensors[0]
    grad = torch.is_grad_enabled()
    return (t.dim() == 2 and 1 <= t.shape[1] <= MAX_DIM and not torch.compiler.is_compiling()
            and all(type(x) is torch.Tensor and x.device.type == "cpu" and x.dtype == torch.float32
                    and x.shape == t.shape and not x.is_neg() and not (grad and x.requires_grad) for x in tensors)
            and library() is not None)


_executor: tuple[int, ThreadPoolExecutor] | None = None  # (workers, pool)


def _pool(workers: int) -> ThreadPoolExecutor:
    """One pool for the process, as wide as torch's thread count (made anew when that changes,
    and in a forked child, whose copy of the parent's pool has no threads)."""
    global _executor
    if _executor is None or _executor[0] != workers:
        if _executor is not None:
            _executor[1].shutdown(wait=False)
        _executor = (workers, ThreadPoolExecutor(workers, thread_name_prefix="rvq-native"))
    return _executor[1]


def _forget_pool() -> None:
    global _executor
    _executor = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _run(fn, e: Tensor, q: Tensor, g: Tensor, *consts) -> Tensor:
    e, q, g = e.contiguous(), q.contiguous(), g.contiguous()
    out = torch.empty_like(e)
    n, d = e.shape
    threads = torch.get_num_threads()
    parts = max(1, min(threads, n // _CHUNK_ROWS))
    bounds = [n * i // parts for i in range(parts + 1)]

    def call(lo: int, hi: int) -> int:
        off = lo * d * 4  # bytes
        return fn(e.data_ptr() + off, q.data_ptr() + off, g.data_ptr() + off, out.data_ptr() + off, hi - lo, d, *consts)

    if parts == 1:
        codes = [call(0, n)]
    else:
        codes = list(_pool(threads).map(call, bounds[:-1], bounds[1:]))
    if any(codes):
        raise ValueError(f"lowdim.c has no loop for D = {d} with constants {consts}")
    return out


def rotation_vjp(e: Tensor, q: Tensor, g: Tensor, gamma_code: int, gamma_const: float, tangent: bool = False) -> Tensor:
    """:func:`.kernels.rotation_vjp_kernel`, in C (see :func:`supports`)."""
    return _run(library().rvq_rotation_vjp, e, q, g, gamma_code, gamma_const, int(tangent))


def reflection_vjp(e: Tensor, q: Tensor, g: Tensor) -> Tensor:
    """:func:`.kernels.reflection_vjp_kernel`, in C (see :func:`supports`)."""
    return _run(library().rvq_reflection_vjp, e, q, g)
