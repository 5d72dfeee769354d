"""The rotation trick (§4.1, A.5) and its family: the γ variants of A.9.2 and the forms the
authors' released code runs.

Notation (paper §4.2): ê = e/‖e‖, q̂ = q/‖q‖, λ = ‖q‖/‖e‖, r = (ê + q̂)/‖ê + q̂‖, g = dL/dq̃.

- rotation:           grad_e = γ Rᵀg,  R = I − 2rrᵀ + 2q̂êᵀ,  γ = λ  (§4.1, A.5)
- rotation_unscaled:  grad_e = Rᵀg                                  (A.9, γ = 1)

The rotation-trick authors' released VQGAN code (Tables 3, 4, 7; exp_weights_and_configs/table_3
rot_vqgan.py and table_4 rot_vitvqgan.py of cfifty/rotation_trick) detaches R and ‖q‖ but not
ê = e/‖e‖, so the gradient passes through the normalisation too; both variants are here by name:

- rotation_released:           grad_e = λ (I − êêᵀ) Rᵀg   (rot_trick)
- rotation_unscaled_released:  grad_e = (1/‖e‖)(I − êêᵀ) Rᵀg   (no_grad_scale, Table 7)

(I − êêᵀ)Rᵀg = Rᵀ(I − q̂q̂ᵀ)g: the part of g along q is dropped, so the decoder's loss never
changes ‖e‖. In dot products: ê·Rᵀg = v/b, so the projection is one more scalar on e.

No d×d matrix is built. With five row dot products a² = e·e, b² = q·q, p = e·q, u = e·g,
v = q·g, and c = p/(ab):

    Rᵀg = g − 2r(r·g) + 2ê(q̂·g) = g + α e + β q,
    t = (u/a + v/b) / (1 + c),  α = (2v/b − t)/a,  β = −t/b.

So a backward is one pass over (e, q, g) for the dot products and one pass writing the result:
about seven passes over N×D in all. Only e and q are saved for backward.

Rows where R is undefined fall back to the STE gradient (see :mod:`.kernels`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Union

import torch
from torch import Tensor

from .base import Estimator, check_pair
from .kernels import fallback_kernel, flat32, rotation_vjp_kernel, run_kernel

__all__ = ["ENTRIES", "GAMMAS", "GammaLike", "rotation", "rotation_released", "rotation_unscaled",
           "rotation_unscaled_released", "rotation_vjp", "with_gamma"]

# γ(e) of the general family (A.9.2), chosen by name. A float is a constant γ.
GAMMAS = ("norm_ratio", "one", "inverse_sq_distance")
_GAMMA_CODE = {"norm_ratio": 0, "one": 1, "inverse_sq_distance": 2, "constant": 3, "inverse_e_norm": 4}

GammaLike = Union[str, float, Callable[[Tensor, Tensor], Tensor]]


def _gamma_args(gamma: GammaLike) -> dict:
    if isinstance(gamma, str):
        return {"gamma_code": _GAMMA_CODE[gamma], "gamma_const": 0.0}
    return {"gamma_code": _GAMMA_CODE["constant"], "gamma_const": float(gamma)}


def rotation_vjp(e: Tensor, q: Tensor, g: Tensor, gamma: GammaLike = "norm_ratio", tangent: bool = False) -> Tensor:
    """γ(e) Rᵀ g for rows of shape (..., D): the gradient the rotation family sends to e; with
    ``tangent``, (I − êêᵀ) γ(e) Rᵀg (the released VQGAN code's form, see the module docstring).

    ``gamma`` is a name from :data:`GAMMAS` (or "inverse_e_norm", γ = 1/‖e‖), a float (constant
    γ) or a callable ``(e, q) -> γ`` returning shape (..., 1) evaluated in fp32 without gradient."""
    shape, dtype = e.shape, e.dtype
    e32, q32, g32 = flat32(e), flat32(q), flat32(g)
    if tangent:
        if callable(gamma):
            raise ValueError("tangent=True takes a named or constant gamma, not a callable")
        out = run_kernel(rotation_vjp_kernel, e32, q32, g32, tangent=True, **_gamma_args(gamma))
    elif callable(gamma):
        rot = run_kernel(rotation_vjp_kernel, e32, q32, g32, gamma_code=1, gamma_const=0.0)
        ok = ~run_kernel(fallback_kernel, e32, q32, parallel=False)
        with torch.no_grad():
            gam = gamma(e32, q32).reshape(-1, 1).float()
        out = torch.where(ok[:, None], gam * rot, g32)
    else:
        out = run_kernel(rotation_vjp_kernel, e32, q32, g32, **_gamma_args(gamma))
    return out.reshape(shape).to(dtype)


class _Rotation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, e: Tensor, q: Tensor, gamma: GammaLike, tangent: bool = False) -> Tensor:
        ctx.save_for_backward(e, q)  # recompute everything else in backward
        ctx.gamma, ctx.tangent = gamma, tangent
        return q

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: Tensor):
        e, q = ctx.saved_tensors
        return rotation_vjp(e, q, g, ctx.gamma, ctx.tangent), None, None, None


def rotation(e: Tensor, q: Tensor, gamma: GammaLike = "norm_ratio") -> Tensor:
    """Rotation trick (§4.1, A.5, A.9.2): forward q, backward γ Rᵀg to e (γ = ‖q‖/‖e‖ by default)."""
    check_pair(e, q)
    return _Rotation.apply(e, q, gamma)


def rotation_unscaled(e: Tensor, q: Tensor) -> Tensor:
    """Rotation trick without the norm ratio (A.9, q̃ = sg(R)e + sg(q − Re)): backward Rᵀg."""
    return rotation(e, q, gamma="one")


def rotation_released(e: Tensor, q: Tensor) -> Tensor:
    """The rotation trick as the authors' released VQGAN code computes it (Tables 3, 4):
    q̃ = sg(R)·(e/‖e‖)·sg(‖q‖), so backward λ(I − êêᵀ)Rᵀg."""
    check_pair(e, q)
    return _Rotation.apply(e, q, "norm_ratio", True)


def rotation_unscaled_released(e: Tensor, q: Tensor) -> Tensor:
    """The released code's unscaled variant (Table 7, ``no_grad_scale``): q̃ = sg(R)ê + sg(q − Rê),
    so backward (1/‖e‖)(I − êêᵀ)Rᵀg."""
    check_pair(e, q)
    return _Rotation.apply(e, q, "inverse_e_norm", True)



ENTRIES = (
    Estimator(
        "rotation", rotation, "rotation trick (paper default): rotates and rescales g so angle(e, grad) = angle(q, g)",
        "λ Rᵀg", "antiparallel", section="§4.1, A.5",
    ),
    Estimator(
        "rotation_unscaled", rotation_unscaled, "rotation trick without the ‖q‖/‖e‖ scale (A.9)",
        "Rᵀg", "antiparallel", section="A.9",
    ),
    Estimator(
        "rotation_released", rotation_released, "the rotation trick as the authors' released VQGAN code runs it "
        "(Tables 3, 4): ê = e/‖e‖ is not detached, so g's part along q is dropped", "λ (I − êêᵀ) Rᵀg",
        "antiparallel", section="Tables 3-4 code",
    ),
    Estimator(
        "rotation_unscaled_released", rotation_unscaled_released, "the released code's unscaled rotation "
        "(Table 7, no_grad_scale)", "(1/‖e‖)(I − êêᵀ) Rᵀg", "antiparallel", section="Table 7 code",
    ),
)


def with_gamma(gamma: GammaLike) -> Estimator:
    """The rotation trick with γ(e) = ``gamma`` (A.9.2): a name from GAMMAS, a float, or a
    callable ``(e, q) -> γ``."""
    if isinstance(gamma, str) and gamma not in GAMMAS:
        raise ValueError(f"unknown gamma {gamma!r}; valid: {', '.join(GAMMAS)}, a number, or a callable")
    if isinstance(gamma, (int, float)) and not math.isfinite(gamma):
        raise ValueError(f"a constant gamma must be finite, got {gamma!r}")
    label = gamma if isinstance(gamma, (str, int, float)) else getattr(gamma, "__name__", "custom")
    return Estimator(
        f"rotation[gamma={label}]", functools.partial(rotation, gamma=gamma),
        f"rotation trick with γ(e) = {label} (A.9.2)", "γ(e) Rᵀg", "antiparallel",
    )
