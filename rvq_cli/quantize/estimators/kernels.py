"""The row-wise kernels behind the rotation family and the reflection trick, and how they run:
pure functions on (N, D) fp32 tensors, run for short rows on the CPU by the C loops of
:mod:`.native` (the same formulas), compiled with torch.compile when the tensors are large enough
for it to pay, eager over cache-sized row blocks otherwise (see :func:`set_compile`).

Degenerate rows, where R is undefined, fall back to the STE gradient (grad_e = g): ‖e‖ ≤ 1e-6 or
‖q‖ ≤ 1e-6 (no direction), and, for the rotation family, e and q within ~0.8° of antiparallel
(1 + cos θ ≤ 1e-4, where the rotation plane is undefined). For the reflection trick, e and q
within ~0.8° of parallel (1 − cos θ ≤ 1e-4) use λg: no reflection is needed there and its mirror
is undefined.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from . import native

__all__ = ["ANGLE_EPS", "NORM_EPS", "fallback_kernel", "flat32", "get_compile", "reflection_vjp_kernel",
           "rotation_vjp_kernel", "run_kernel", "set_compile"]

NORM_EPS = 1e-6  # rows with ‖e‖ or ‖q‖ at or below this have no direction: STE fallback
ANGLE_EPS = 1e-4  # 1 ± cos θ at or below this: rotation plane / mirror undefined
INV_SQ_DIST_FLOOR = 1e-6  # floor on ‖q − e‖² in γ = 1/(8‖q − e‖²), so γ ≤ 1.25e5

def _row_stats(e: Tensor, q: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """a² = ‖e‖², b² = ‖q‖², p = e·q per row, each (N, 1)."""
    return (e * e).sum(-1, keepdim=True), (q * q).sum(-1, keepdim=True), (e * q).sum(-1, keepdim=True)


def rotation_vjp_kernel(e: Tensor, q: Tensor, g: Tensor, gamma_code: int, gamma_const: float,
                         tangent: bool = False) -> Tensor:
    """γ Rᵀg with the STE fallback on degenerate rows (see the rotation and reflection modules); with ``tangent``,
    (I − êêᵀ) γ Rᵀg (the released VQGAN code's form) on the rows that are not degenerate."""
    a2, b2, p = _row_stats(e, q)
    u = (e * g).sum(-1, keepdim=True)  # e·g
    v = (q * g).sum(-1, keepdim=True)  # q·g
    ok = (a2 > NORM_EPS**2) & (b2 > NORM_EPS**2)
    ia = a2.clamp_min(NORM_EPS**2).rsqrt()  # 1/‖e‖
    ib = b2.clamp_min(NORM_EPS**2).rsqrt()  # 1/‖q‖
    opc = 1.0 + p * ia * ib  # 1 + cos θ = ‖ê + q̂‖²/2
    ok = ok & (opc > ANGLE_EPS) & torch.isfinite(a2 + b2 + p)
    t = (u * ia + v * ib) / opc.clamp_min(ANGLE_EPS)  # 2 r (r·g) = (ê + q̂) t
    alpha = (2.0 * v * ib - t) * ia
    beta = -t * ib
    if gamma_code == 0:  # λ = ‖q‖/‖e‖
        gamma = b2 * ib * ia
    elif gamma_code == 1:
        gamma = torch.ones_like(ia)
    elif gamma_code == 2:  # 1 / (8‖q − e‖²)
        gamma = 1.0 / (8.0 * (a2 + b2 - 2.0 * p).clamp_min(INV_SQ_DIST_FLOOR))
    elif gamma_code == 4:  # 1/‖e‖
        gamma = ia
    else:
        gamma = torch.full_like(ia, gamma_const)
    if tangent:  # ê·Rᵀg = q̂·g = v/‖q‖: subtract ê(ê·Rᵀg) = e (v ib ia)·ia from α e
        alpha = alpha - v * ib * ia
    lam = torch.where(ok, gamma, 1.0)
    alpha = torch.where(ok, gamma * alpha, 0.0)
    beta = torch.where(ok, gamma * beta, 0.0)
    return lam * g + alpha * e + beta * q  # (N, D)


def reflection_vjp_kernel(e: Tensor, q: Tensor, g: Tensor) -> Tensor:
    """λ(I − 2ssᵀ)g, s = (ê − q̂)/‖ê − q̂‖, with fallbacks (see the rotation and reflection modules)."""
    a2, b2, p = _row_stats(e, q)
    u = (e * g).sum(-1, keepdim=True)
    v = (q * g).sum(-1, keepdim=True)
    ok = (a2 > NORM_EPS**2) & (b2 > NORM_EPS**2) & torch.isfinite(a2 + b2 + p)
    ia = a2.clamp_min(NORM_EPS**2).rsqrt()
    ib = b2.clamp_min(NORM_EPS**2).rsqrt()
    omc = 1.0 - p * ia * ib  # 1 − cos θ = ‖ê − q̂‖²/2
    mirror = ok & (omc > ANGLE_EPS)
    w = (u * ia - v * ib) / omc.clamp_min(ANGLE_EPS)  # 2 s (s·g) = (ê − q̂) w
    lam = torch.where(ok, b2 * ib * ia, 1.0)
    alpha = torch.where(mirror, -lam * w * ia, 0.0)
    beta = torch.where(mirror, lam * w * ib, 0.0)
    return lam * g + alpha * e + beta * q


def fallback_kernel(e: Tensor, q: Tensor, parallel: bool) -> Tensor:
    """Boolean (N,) mask of rows whose estimator falls back."""
    a2, b2, p = _row_stats(e, q)
    bad = (a2 <= NORM_EPS**2) | (b2 <= NORM_EPS**2) | ~torch.isfinite(a2 + b2 + p)
    cos = p * a2.clamp_min(NORM_EPS**2).rsqrt() * b2.clamp_min(NORM_EPS**2).rsqrt()
    near = (1.0 - cos) <= ANGLE_EPS if parallel else (1.0 + cos) <= ANGLE_EPS
    return (bad | near).squeeze(-1)


_IN_C = {rotation_vjp_kernel: native.rotation_vjp, reflection_vjp_kernel: native.reflection_vjp}
_COMPILE_MODE = os.environ.get("RVQ_COMPILE", "auto").lower()
_AUTO_MIN_NUMEL = 1 << 16  # below this the eager kernel is as fast as compiling pays for
_RECOMPILE_LIMIT = 64  # graphs per kernel: D values times constant sets
_compiled: dict[tuple, Callable] = {}
_compile_failed = False


def set_compile(mode: str) -> None:
    """Choose how estimator kernels run: "auto" (rows of D ≤ 8 in fp32 on the CPU in C, see
    :mod:`.native`; other tensors of ≥ 65,536 elements with torch.compile, smaller ones eagerly),
    "always" (torch.compile at every size, C for none) or "never" (eagerly: nothing compiled). Each
    D (and each constant of a kernel) compiles once. The environment variable RVQ_COMPILE sets the
    initial mode."""
    global _COMPILE_MODE
    if mode not in ("auto", "always", "never"):
        raise ValueError(f"compile mode must be 'auto', 'always' or 'never', got {mode!r}")
    _COMPILE_MODE = mode


def get_compile() -> str:
    """The current compile mode (see :func:`set_compile`)."""
    return _COMPILE_MODE


def _mode() -> str:
    return {"1": "always", "true": "always", "0": "never", "false": "never"}.get(_COMPILE_MODE, _COMPILE_MODE)


def _use_compiled(numel: int) -> bool:
    mode = _mode()
    if _compile_failed or mode == "never" or torch.compiler.is_compiling():
        return False
    return mode == "always" or numel >= _AUTO_MIN_NUMEL


def run_kernel(kernel: Callable, *tensors: Tensor, **consts):
    """Run ``kernel(*tensors, **consts)`` as the compile mode says (see :func:`set_compile`): in C,
    compiled (one fused loop per pass) or eagerly. Each distinct set of constants is its own
    compiled graph."""
    global _compile_failed
    in_c = _IN_C.get(kernel)
    if in_c is not None and _mode() == "auto" and native.supports(*tensors):
        return in_c(*tensors, **consts)
    if _use_compiled(tensors[0].numel()):
        key = (kernel.__name__, tuple(sorted(consts.items())))
        fn = _compiled.get(key)
        if fn is None:
            logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "no CUDA runtime" noise
            fn = _compiled[key] = torch.compile(functools.partial(kernel, **consts), dynamic=False)
        for t in tensors:  # one graph for every N; D stays static so short rows unroll
            torch._dynamo.maybe_mark_dynamic(t, 0)
        # one graph per D and per set of constants, all of the kernel's code object: past dynamo's
        # default of 8 graphs per code object it would stop compiling and run slower than eager
        config = torch._dynamo.config
        name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # torch < 2.7
        limit = {name: max(_RECOMPILE_LIMIT, getattr(config, name))}
        try:
            with config.patch(**limit):
                return fn(*tensors)
        except Exception as err:  # no C++ compiler, unsupported backend, ...
            _compile_failed = True
            warnings.warn(f"rvq: torch.compile of the estimator kernels failed ({err.__class__.__name__}: "
                          f"{err}); using the eager kernels. Set RVQ_COMPILE=never to silence this.", stacklevel=2)
    return _run_eager(kernel, *tensors, **consts)


_EAGER_BLOCK = 1 << 18  # elements per row block: the eager kernel's temporaries stay in cache


def _run_eager(kernel: Callable, *tensors: Tensor, **consts):
    """The kernel eagerly, over blocks of rows (every kernel here is row-wise)."""
    n, d = tensors[0].shape
    rows = max(1, _EAGER_BLOCK // max(1, d))
    if n <= rows:
        return kernel(*tensors, **consts)
    return torch.cat([kernel(*(t[i : i + rows] for t in tensors), **consts) for i in range(0, n, rows)])



def flat32(x: Tensor) -> Tensor:
    """(..., D) -> (N, D) in fp32 at least (fp16/bf16 are upcast, fp64 is kept)."""
    x = x.reshape(-1, x.shape[-1])
    return x if x.dtype == torch.float64 else x.float()
