"""The rotation-family and reflection gradients for short rows (D ≤ 8) on the CPU, from the C loops
in ``rvq_cli/native/lowdim.c`` (built once per machine, cached and loaded by :mod:`rvq_cli.native`);
large inputs run in row chunks on torch's thread count.

Why: torch.compile turns the kernels of :mod:`.kernels` into one loop over rows that it does not
vectorise when a row is this short, so at D = 3 the gradient cost about ten times the textbook STE
expression; compiled from C with D fixed, the loop runs 8–16 rows per vector instruction
(docs/benchmarks.md, "The rotation estimator alone")."""

from __future__ import annotations

import torch
from torch import Tensor

from ...native import library, run_split, status

__all__ = ["MAX_DIM", "library", "reflection_vjp", "rotation_vjp", "status", "supports"]

MAX_DIM = 8  # lowdim.c has loops for D = 1 … 8; from D = 16 the compiled torch kernel is as fast
_CHUNK_ROWS = 1 << 16  # rows per thread, at least: below this one thread is faster than handing off


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


def _run(fn, e: Tensor, q: Tensor, g: Tensor, *consts) -> Tensor:
    e, q, g = e.contiguous(), q.contiguous(), g.contiguous()
    out = torch.empty_like(e)
    n, d = e.shape

    def call(lo: int, hi: int) -> int:
        off = lo * d * 4  # bytes
        return fn(e.data_ptr() + off, q.data_ptr() + off, g.data_ptr() + off, out.data_ptr() + off, hi - lo, d, *consts)

    if any(run_split(call, n, _CHUNK_ROWS)):
        raise ValueError(f"lowdim.c has no loop for D = {d} with constants {consts}")
    return out


def rotation_vjp(e: Tensor, q: Tensor, g: Tensor, gamma_code: int, gamma_const: float, tangent: bool = False) -> Tensor:
    """:func:`.kernels.rotation_vjp_kernel`, in C (see :func:`supports`)."""
    return _run(library().rvq_rotation_vjp, e, q, g, gamma_code, gamma_const, int(tangent))


def reflection_vjp(e: Tensor, q: Tensor, g: Tensor) -> Tensor:
    """:func:`.kernels.reflection_vjp_kernel`, in C (see :func:`supports`)."""
    return _run(library().rvq_reflection_vjp, e, q, g)
