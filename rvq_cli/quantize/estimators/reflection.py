"""The reflection trick (A.8): one Householder reflection across the hyperplane orthogonal to
e − q, scaled by λ = ‖q‖/‖e‖: grad_e = λ(I − 2ssᵀ)g with s = (ê − q̂)/‖ê − q̂‖. An ablation of the
paper; it trains poorly. Rows with e and q within ~0.8° of parallel use λg (no mirror needed)."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Estimator, check_pair
from .kernels import flat32, reflection_vjp_kernel, run_kernel

__all__ = ["ENTRIES", "reflection", "reflection_vjp"]


def reflection_vjp(e: Tensor, q: Tensor, g: Tensor) -> Tensor:
    """λ(I − 2ssᵀ)g for rows of shape (..., D): the reflection trick's gradient to e (A.8)."""
    out = run_kernel(reflection_vjp_kernel, flat32(e), flat32(q), flat32(g))
    return out.reshape(e.shape).to(e.dtype)


class _Reflection(torch.autograd.Function):
    @staticmethod
    def forward(ctx, e: Tensor, q: Tensor) -> Tensor:
        ctx.save_for_backward(e, q)
        return q

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: Tensor):
        e, q = ctx.saved_tensors
        return reflection_vjp(e, q, g), None


def reflection(e: Tensor, q: Tensor) -> Tensor:
    """Reflection trick (A.8): one Householder reflection across (e − q)⊥, scaled by ‖q‖/‖e‖."""
    check_pair(e, q)
    return _Reflection.apply(e, q)



ENTRIES = (
    Estimator(
        "reflection", reflection, "one Householder reflection across (e − q)⊥ (A.8); an ablation, trains poorly",
        "λ (I − 2ssᵀ) g", "parallel", section="A.8",
    ),
)
