"""GroupNorm, optionally followed by SiLU, as the conv models call it: PyTorch's own, except on
channels-last CPU maps, where the C loops of ``rvq_cli/native/groupnorm.c`` run instead.

Why: PyTorch's CPU GroupNorm backward on channels-last maps takes 10–20× its time on contiguous
ones (bf16, 8 × 64 × 64², 17.6 against 1.7 ms), which made channels_last a net loss for the conv
tokenizers although their convolutions run faster in it. The C loops take 1.1–1.5× PyTorch's
contiguous time (the samples in parallel on torch's OpenMP threads), and fuse the SiLU that
follows every GroupNorm but one in these models (its backward recomputes the normalised map
instead of keeping it). docs/benchmarks.md has the figures.

The C path computes the same function (tested against float64 references, as PyTorch's is): a
first-order backward only, so :func:`twice_differentiable` switches it off where a step needs
second derivatives (the ``hessian`` estimator); off, too, for tensors it does not cover (not
channels-last, not on the CPU, not fp32/bf16, bf16 affine parameters, inside torch.compile) and
where the library cannot be built (``rvq_cli.native.status()``). Hooks registered on the
``nn.GroupNorm`` module do not run on the C path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ..native import library

__all__ = ["norm_silu", "twice_differentiable", "uses_c_loops"]

_second_order = 0  # > 0 inside twice_differentiable()


@contextlib.contextmanager
def twice_differentiable() -> Iterator[None]:
    """GroupNorm in PyTorch's own (twice differentiable) kernels within this block."""
    global _second_order
    _second_order += 1
    try:
        yield
    finally:
        _second_order -= 1


def uses_c_loops(x: Tensor, norm: nn.GroupNorm) -> bool:
    """Whether :func:`norm_silu` sends ``x`` to the C loops (see the module's docstring)."""
    params = [p for p in (norm.weight, norm.bias) if p is not None]
    return (x.dim() == 4 and x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16)
            and type(x) is Tensor and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
            and not x.is_neg() and len(params) in (0, 2) and all(p.dtype == torch.float32 and p.device.type == "cpu"
                                                                 for p in params)
            and not _second_order and not torch.compiler.is_compiling() and library() is not None)


def norm_silu(norm: nn.GroupNorm, x: Tensor, silu: bool = True) -> Tensor:
    """``F.silu(norm(x))`` (``norm(x)`` with ``silu=False``), on the C loops where they apply."""
    if uses_c_loops(x, norm):
        return _GroupNormNHWC.apply(x, norm.weight, norm.bias, norm.num_groups, norm.eps, silu)
    y = norm(x)
    return F.silu(y) if silu else y


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class _GroupNormNHWC(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, bias: Tensor | None, groups: int, eps: float,
                silu: bool) -> Tensor:
        n, c, h, w = x.shape
        y = torch.empty_like(x, memory_format=torch.channels_last)
        mean = torch.empty(n, groups)
        rstd = torch.empty(n, groups)
        wt = None if weight is None else weight.detach().contiguous()
        bs = None if bias is None else bias.detach().contiguous()
        bf16 = int(x.dtype == torch.bfloat16)
        lib = library()

        if lib.rvq_groupnorm_fwd(x.data_ptr(), _ptr(wt), _ptr(bs), y.data_ptr(), mean.data_ptr(), rstd.data_ptr(),
                                 n, h * w, c, groups, eps, int(silu), bf16, torch.get_num_threads()):
            raise ValueError(f"groupnorm.c refused {groups} groups of {c} channels (or ran out of memory)")
        ctx.save_for_backward(x, wt, bs, mean, rstd)
        ctx.groups, ctx.silu = groups, silu
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: Tensor):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        n, c, h, w = x.shape
        dy = dy.to(x.dtype).contiguous(memory_format=torch.channels_last)
        dx = torch.empty_like(x, memory_format=torch.channels_last)
        affine = weight is not None
        dw_part = torch.empty(n, c) if affine else None
        db_part = torch.empty(n, c) if affine else None
        bf16 = int(x.dtype == torch.bfloat16)
        lib = library()

        if lib.rvq_groupnorm_bwd(x.data_ptr(), dy.data_ptr(), _ptr(weight), _ptr(bias), mean.data_ptr(),
                                 rstd.data_ptr(), dx.data_ptr(), _ptr(dw_part), _ptr(db_part), n, h * w, c,
                                 ctx.groups, int(ctx.silu), bf16, torch.get_num_threads()):
            raise ValueError(f"groupnorm.c refused {ctx.groups} groups of {c} channels (or ran out of memory)")
        dweight = dw_part.sum(0) if affine and ctx.needs_input_grad[1] else None
        dbias = db_part.sum(0) if affine and ctx.needs_input_grad[2] else None
        return dx, dweight, dbias, None, None, None
