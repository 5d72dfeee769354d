"""rvq's C loops: the C files of this folder, built once per machine into one library with the
system C compiler (the one torch.compile needs on the CPU anyway), cached, and called through
ctypes, which releases the GIL so that large inputs run in chunks on torch's thread count.

- ``lowdim.c``: the rotation-family and reflection gradients for short rows (D ≤ 8), which
  torch.compile does not vectorise (:mod:`rvq_cli.quantize.estimators.native`);
- ``groupnorm.c``: GroupNorm (+ SiLU) forward and backward on channels-last maps, whose PyTorch
  CPU backward is 10–20× slower than on contiguous ones (:mod:`rvq_cli.models.groupnorm`).

The library goes to ``$RVQ_CACHE/native`` (else ``$XDG_CACHE_HOME/rvq/native``, else
``~/.cache/rvq/native``) under a name that hashes the sources, the compiler, its flags and the CPU's
feature flags (Linux builds for the CPU at hand, -march=native; elsewhere, where those flags are
not read, for the compiler's default target), so a cache shared between machines never hands one
CPU another's instructions. Where no compiler is found or the build fails, :func:`library` returns
None and the callers run their torch code as before; :func:`status` says which and why."""

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

from ..files import atomic_path, user_cache

__all__ = ["SOURCES", "library", "run_split", "status"]

SOURCES = tuple(sorted(Path(__file__).parent.glob("*.c")))
# -ffp-contract=off: no fused multiply-adds, the torch kernels' rounding; -fno-math-errno and
# -fno-trapping-math let the compiler vectorise sqrt and the fallback selects (results unchanged)
FLAGS = ("-O3", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off", "-shared", "-fPIC")
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
    """Compile the sources to ``out`` (on Linux for this CPU with OpenMP first, then without OpenMP,
    then for the compiler's default target); '' on success, else the compiler's complaint. Nothing
    is left at ``out`` when it fails. OpenMP: groupnorm.c runs its samples on the OpenMP runtime,
    and libgomp.so.1 resolves to the copy torch has loaded already, so its threads are torch's."""
    problem = ""
    linux = sys.platform.startswith("linux")
    arches = (("-march=native", "-fopenmp"), ("-march=native",), ()) if linux else ((),)
    for arch in arches:
        try:
            with atomic_path(out, suffix=".so") as tmp:
                try:
                    run = _run_quietly([*cc, *arch, *FLAGS, *map(str, SOURCES), "-o", str(tmp)], timeout=120)
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
    ptr, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    rows = [ptr] * 4 + [i64, i32]
    lib.rvq_rotation_vjp.argtypes = rows + [i32, ctypes.c_float, i32]
    lib.rvq_reflection_vjp.argtypes = rows
    lib.rvq_groupnorm_fwd.argtypes = [ptr] * 6 + [i64] * 4 + [ctypes.c_float, i32, i32, i32]
    lib.rvq_groupnorm_bwd.argtypes = [ptr] * 9 + [i64] * 4 + [i32, i32, i32]
    for fn in (lib.rvq_rotation_vjp, lib.rvq_reflection_vjp, lib.rvq_groupnorm_fwd, lib.rvq_groupnorm_bwd):
        fn.restype = i32
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
        source = "\0".join(p.read_text() for p in SOURCES)
    except (OSError, subprocess.TimeoutExpired) as err:
        _why_not = f"the C compiler {cc[0]} did not run, or a C source is missing ({err})"
        return None
    if version.returncode:
        _why_not = f"the C compiler {cc[0]} does not run (exit status {version.returncode} for --version)"
        return None
    key = hashlib.sha256("\0".join([source, *cc, version.stdout, " ".join(FLAGS), _cpu_flags()]).encode())
    try:
        path = _cache_dir() / f"rvq-native-{key.hexdigest()[:16]}.so"
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
    """'in use' (building the library if needed), or why the torch code runs instead."""
    return "in use" if library() is not None else _why_not


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


def run_split(call, n: int, min_chunk: int) -> list[int]:
    """``call(lo, hi)`` over [0, n) in up to torch.get_num_threads() chunks of at least
    ``min_chunk`` items, on the shared pool (in this thread when there is one chunk); the return codes."""
    threads = torch.get_num_threads()
    parts = max(1, min(threads, n // max(min_chunk, 1)))
    if parts == 1:
        return [call(0, n)]
    bounds = [n * i // parts for i in range(parts + 1)]
    return list(_pool(threads).map(call, bounds[:-1], bounds[1:]))
