"""Gradient estimators through the quantizer: the registry of every estimator of the paper, and
the pointwise ones.

The registry (:data:`ESTIMATORS`) also names the loss-level estimators (``hessian``, ``exact``,
completed by :mod:`rvq_cli.train.loss_level`) and ``gumbel`` (in the quantizer itself). Every
pointwise estimator (:data:`POINTWISE`) is a callable ``(e, q) -> q_tilde`` on tensors of shape (..., D) where ``e`` is
the encoder output and ``q`` its codebook vector. The forward value is ``q`` itself (bit for bit:
the decoder sees in training exactly what it sees when decoding tokens); estimators differ only
in the gradient they send back to ``e``. Nothing flows to the codebook through this path.

Notation (paper §4.2): ê = e/‖e‖, q̂ = q/‖q‖, λ = ‖q‖/‖e‖, r = (ê + q̂)/‖ê + q̂‖, g = dL/dq̃.

- ste:                grad_e = g                                    (§3)
- rotation:           grad_e = γ Rᵀg,  R = I − 2rrᵀ + 2q̂êᵀ,  γ = λ  (§4.1, A.5)
- rotation_unscaled:  grad_e = Rᵀg                                  (A.9, γ = 1)
- reflection:         grad_e = λ(I − 2ssᵀ)g,  s = (ê − q̂)/‖ê − q̂‖   (A.8)

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

Degenerate rows, where R is undefined, fall back to the STE gradient (grad_e = g) and are
counted by :meth:`Estimator.count_fallbacks`: ‖e‖ ≤ 1e-6 or ‖q‖ ≤ 1e-6 (no direction), and,
for the rotation family, e and q within ~0.8° of antiparallel (1 + cos θ ≤ 1e-4, where the
rotation plane is undefined). For the reflection trick, e and q within ~0.8° of parallel
(1 − cos θ ≤ 1e-4) use λg: no reflection is needed there and its mirror is undefined.
All estimator math runs in fp32 (fp64 inputs stay fp64), whatever the input dtype; the gradient is returned in e's dtype.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Callable, Union

import torch
from torch import Tensor

__all__ = [
    "ESTIMATORS",
    "KINDS",
    "POINTWISE",
    "GAMMAS",
    "Estimator",
    "get_estimator",
    "rotation_vjp",
    "reflection_vjp",
    "get_compile",
    "set_compile",
]

NORM_EPS = 1e-6  # rows with ‖e‖ or ‖q‖ at or below this have no direction: STE fallback
ANGLE_EPS = 1e-4  # 1 ± cos θ at or below this: rotation plane / mirror undefined
INV_SQ_DIST_FLOOR = 1e-6  # floor on ‖q − e‖² in γ = 1/(8‖q − e‖²), so γ ≤ 1.25e5

# γ(e) of the general family (A.9.2), chosen by name. A float is a constant γ.
GAMMAS = ("norm_ratio", "one", "inverse_sq_distance")
_GAMMA_CODE = {"norm_ratio": 0, "one": 1, "inverse_sq_distance": 2, "constant": 3, "inverse_e_norm": 4}

GammaLike = Union[str, float, Callable[[Tensor, Tensor], Tensor]]


# --------------------------------------------------------------------------------------------
# Kernels: pure functions on (N, D) fp32 tensors. Compiled with torch.compile when it pays.
# --------------------------------------------------------------------------------------------


def _row_stats(e: Tensor, q: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """a² = ‖e‖², b² = ‖q‖², p = e·q per row, each (N, 1)."""
    return (e * e).sum(-1, keepdim=True), (q * q).sum(-1, keepdim=True), (e * q).sum(-1, keepdim=True)


def _rotation_vjp_kernel(e: Tensor, q: Tensor, g: Tensor, gamma_code: int, gamma_const: float,
                         tangent: bool = False) -> Tensor:
    """γ Rᵀg with the STE fallback on degenerate rows (see module docstring); with ``tangent``,
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


def _reflection_vjp_kernel(e: Tensor, q: Tensor, g: Tensor) -> Tensor:
    """λ(I − 2ssᵀ)g, s = (ê − q̂)/‖ê − q̂‖, with fallbacks (see module docstring)."""
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


def _fallback_kernel(e: Tensor, q: Tensor, parallel: bool) -> Tensor:
    """Boolean (N,) mask of rows whose estimator falls back."""
    a2, b2, p = _row_stats(e, q)
    bad = (a2 <= NORM_EPS**2) | (b2 <= NORM_EPS**2) | ~torch.isfinite(a2 + b2 + p)
    cos = p * a2.clamp_min(NORM_EPS**2).rsqrt() * b2.clamp_min(NORM_EPS**2).rsqrt()
    near = (1.0 - cos) <= ANGLE_EPS if parallel else (1.0 + cos) <= ANGLE_EPS
    return (bad | near).squeeze(-1)


_COMPILE_MODE = os.environ.get("RVQ_COMPILE", "auto").lower()
_AUTO_MIN_NUMEL = 1 << 16  # below this the eager kernel is as fast as compiling pays for
_compiled: dict[tuple, Callable] = {}
_compile_failed = False


def set_compile(mode: str) -> None:
    """Choose how estimator kernels run: "auto" (compile for tensors of ≥ 65,536 elements),
    "always", or "never". Each D (and each constant of a kernel) compiles once. The environment variable RVQ_COMPILE sets the initial mode."""
    global _COMPILE_MODE
    if mode not in ("auto", "always", "never"):
        raise ValueError(f"compile mode must be 'auto', 'always' or 'never', got {mode!r}")
    _COMPILE_MODE = mode


def get_compile() -> str:
    """The current compile mode (see :func:`set_compile`)."""
    return _COMPILE_MODE


def _use_compiled(numel: int) -> bool:
    mode = {"1": "always", "true": "always", "0": "never", "false": "never"}.get(_COMPILE_MODE, _COMPILE_MODE)
    if _compile_failed or mode == "never" or torch.compiler.is_compiling():
        return False
    return mode == "always" or numel >= _AUTO_MIN_NUMEL


def _run(kernel: Callable, *tensors: Tensor, **consts):
    """Run ``kernel(*tensors, **consts)``: compiled (one fused loop per pass) when it pays, eager
    otherwise. Each distinct set of constants is its own compiled graph."""
    global _compile_failed
    if _use_compiled(tensors[0].numel()):
        key = (kernel.__name__, tuple(sorted(consts.items())))
        fn = _compiled.get(key)
        if fn is None:
            logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "no CUDA runtime" noise
            fn = _compiled[key] = torch.compile(functools.partial(kernel, **consts), dynamic=False)
        for t in tensors:  # one graph for every N; D stays static so short rows unroll
            torch._dynamo.maybe_mark_dynamic(t, 0)
        try:
            return fn(*tensors)
        except Exception as err:  # no C++ compiler, unsupported backend, ...
            _compile_failed = True
            warnings.warn(f"rvq: torch.compile of the estimator kernels failed ({err.__class__.__name__}: "
                          f"{err}); using the eager kernels. Set RVQ_COMPILE=never to silence this.")
    return _run_eager(kernel, *tensors, **consts)


_EAGER_BLOCK = 1 << 18  # elements per row block: the eager kernel's temporaries stay in cache


def _run_eager(kernel: Callable, *tensors: Tensor, **consts):
    """The kernel eagerly, over blocks of rows (every kernel here is row-wise)."""
    n, d = tensors[0].shape
    rows = max(1, _EAGER_BLOCK // max(1, d))
    if n <= rows:
        return kernel(*tensors, **consts)
    return torch.cat([kernel(*(t[i : i + rows] for t in tensors), **consts) for i in range(0, n, rows)])


# --------------------------------------------------------------------------------------------
# Public vector-Jacobian products and autograd Functions
# --------------------------------------------------------------------------------------------


def _flat32(x: Tensor) -> Tensor:
    """(..., D) -> (N, D) in fp32 at least (fp16/bf16 are upcast, fp64 is kept)."""
    x = x.reshape(-1, x.shape[-1])
    return x if x.dtype == torch.float64 else x.float()


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
    e32, q32, g32 = _flat32(e), _flat32(q), _flat32(g)
    if tangent:
        if callable(gamma):
            raise ValueError("tangent=True takes a named or constant gamma, not a callable")
        out = _run(_rotation_vjp_kernel, e32, q32, g32, tangent=True, **_gamma_args(gamma))
    elif callable(gamma):
        rot = _run(_rotation_vjp_kernel, e32, q32, g32, gamma_code=1, gamma_const=0.0)
        ok = ~_run(_fallback_kernel, e32, q32, parallel=False)
        with torch.no_grad():
            gam = gamma(e32, q32).reshape(-1, 1).float()
        out = torch.where(ok[:, None], gam * rot, g32)
    else:
        out = _run(_rotation_vjp_kernel, e32, q32, g32, **_gamma_args(gamma))
    return out.reshape(shape).to(dtype)


def reflection_vjp(e: Tensor, q: Tensor, g: Tensor) -> Tensor:
    """λ(I − 2ssᵀ)g for rows of shape (..., D): the reflection trick's gradient to e (A.8)."""
    out = _run(_reflection_vjp_kernel, _flat32(e), _flat32(q), _flat32(g))
    return out.reshape(e.shape).to(e.dtype)


class _STE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, e: Tensor, q: Tensor) -> Tensor:
        return q  # returned as-is: autograd makes it a view, no copy

    @staticmethod
    def backward(ctx, g: Tensor):
        return g, None


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


def _check_pair(e: Tensor, q: Tensor) -> None:
    if e.shape != q.shape:
        raise ValueError(f"estimator inputs must have the same shape, got e {tuple(e.shape)} and q {tuple(q.shape)}")


def ste(e: Tensor, q: Tensor) -> Tensor:
    """Straight-through estimator (§3): forward q, backward copies g to e."""
    _check_pair(e, q)
    return _STE.apply(e, q)


def rotation(e: Tensor, q: Tensor, gamma: GammaLike = "norm_ratio") -> Tensor:
    """Rotation trick (§4.1, A.5, A.9.2): forward q, backward γ Rᵀg to e (γ = ‖q‖/‖e‖ by default)."""
    _check_pair(e, q)
    return _Rotation.apply(e, q, gamma)


def rotation_unscaled(e: Tensor, q: Tensor) -> Tensor:
    """Rotation trick without the norm ratio (A.9, q̃ = sg(R)e + sg(q − Re)): backward Rᵀg."""
    return rotation(e, q, gamma="one")


def reflection(e: Tensor, q: Tensor) -> Tensor:
    """Reflection trick (A.8): one Householder reflection across (e − q)⊥, scaled by ‖q‖/‖e‖."""
    _check_pair(e, q)
    return _Reflection.apply(e, q)


def rotation_released(e: Tensor, q: Tensor) -> Tensor:
    """The rotation trick as the authors' released VQGAN code computes it (Tables 3, 4):
    q̃ = sg(R)·(e/‖e‖)·sg(‖q‖), so backward λ(I − êêᵀ)Rᵀg."""
    _check_pair(e, q)
    return _Rotation.apply(e, q, "norm_ratio", True)


def rotation_unscaled_released(e: Tensor, q: Tensor) -> Tensor:
    """The released code's unscaled variant (Table 7, ``no_grad_scale``): q̃ = sg(R)ê + sg(q − Rê),
    so backward (1/‖e‖)(I − êêᵀ)Rᵀg."""
    _check_pair(e, q)
    return _Rotation.apply(e, q, "inverse_e_norm", True)


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


KINDS = ("pointwise", "loss-level", "stochastic")


@dataclass(frozen=True)
class Estimator:
    """A named estimator. Pointwise ones are called as ``estimator(e, q) -> q_tilde``; the
    loss-level ones (``hessian``, ``exact``) need the decoder and the loss, so the quantizer hands
    its decoder input out and :mod:`rvq_cli.train.loss_level` completes the gradient; ``gumbel``
    replaces the nearest-code lookup in training by a Gumbel-softmax mixture of codes."""

    name: str
    fn: Callable[[Tensor, Tensor], Tensor] | None = field(repr=False)
    summary: str
    formula: str  # the gradient sent to e, in the notation of the module docstring
    fallback: str = "none"  # which rows fall back: "none", "antiparallel" or "parallel"
    kind: str = "pointwise"  # one of KINDS
    section: str = ""  # where the paper defines it
    acts_on: str = "normalized"  # cosine lookup: the estimator sees ê ("normalized") or the unnormalised e ("raw")

    @property
    def pointwise(self) -> bool:
        return self.kind == "pointwise"

    def __call__(self, e: Tensor, q: Tensor) -> Tensor:
        if self.fn is None:
            raise TypeError(f"the {self.name!r} estimator is {self.kind}: it cannot be applied to (e, q) alone")
        return self.fn(e, q)

    @torch.no_grad()
    def count_fallbacks(self, e: Tensor, q: Tensor) -> Tensor:
        """How many rows of (e, q) take this estimator's degenerate-row fallback (0-dim int64)."""
        if self.fallback == "none":
            return torch.zeros((), dtype=torch.long, device=e.device)
        mask = _run(_fallback_kernel, _flat32(e), _flat32(q), parallel=self.fallback == "parallel")
        return mask.sum()


ESTIMATORS: dict[str, Estimator] = {
    est.name: est
    for est in (
        Estimator("ste", ste, "straight-through: copies the gradient at q to e", "g", section="§3"),
        Estimator(
            "rotation", rotation, "rotation trick (paper default): rotates and rescales g so angle(e, grad) = angle(q, g)",
            "λ Rᵀg", "antiparallel", section="§4.1, A.5",
        ),
        Estimator(
            "rotation_unscaled", rotation_unscaled, "rotation trick without the ‖q‖/‖e‖ scale (A.9)",
            "Rᵀg", "antiparallel", section="A.9",
        ),
        Estimator(
            "reflection", reflection, "one Householder reflection across (e − q)⊥ (A.8); an ablation, trains poorly",
            "λ (I − 2ssᵀ) g", "parallel", section="A.8",
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
        Estimator(
            "ste_raw", ste, "straight-through to the unnormalised encoder output under cosine lookup, as "
            "enhancing-transformers' ViT-VQGAN (the Tables 4-5 STE baseline); same as ste for euclidean lookup",
            "g (to e before l2-normalisation)", section="Tables 4-5 code", acts_on="raw",
        ),
        Estimator(
            "hessian", None, "second-order Taylor step from q to e through the decoder and loss (a Hessian-vector "
            "product, no Hessian is formed)", "g + H_q (e − q)", kind="loss-level", section="§3, A.3",
        ),
        Estimator(
            "exact", None, "two forward passes, L = L_q + ε L_e: the encoder gets the plain autoencoder's gradient, "
            "the decoder the VQ one", "∂L_e/∂e", kind="loss-level", section="§3, A.3",
        ),
        Estimator(
            "gumbel", None, "Gumbel-softmax mixture of codes, temperature annealed 1 → 1/16; logits: negative code "
            "distances, or karpathy's learned linear map (gumbel_logits); hard code of the reported index at eval",
            "through the soft mixture", kind="stochastic", section="§5.1, A.10.1",
        ),
    )
}

# The estimators that are a function of (e, q) alone.
POINTWISE: dict[str, Estimator] = {k: v for k, v in ESTIMATORS.items() if v.pointwise}


def get_estimator(name: str, *, gamma: GammaLike | None = None) -> Estimator:
    """Look up an estimator by name. ``gamma`` picks γ(e) of the rotation family (A.9.2):
    a name from GAMMAS, a float, or a callable ``(e, q) -> γ``; only ``rotation`` takes it."""
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; valid estimators: {', '.join(ESTIMATORS)}")
    est = ESTIMATORS[name]
    if gamma is None:
        return est
    if name != "rotation":
        raise ValueError(f"gamma is an option of the 'rotation' estimator only, not of {name!r}")
    if isinstance(gamma, str) and gamma not in GAMMAS:
        raise ValueError(f"unknown gamma {gamma!r}; valid: {', '.join(GAMMAS)}, a number, or a callable")
    if isinstance(gamma, (int, float)) and not math.isfinite(gamma):
        raise ValueError(f"a constant gamma must be finite, got {gamma!r}")
    label = gamma if isinstance(gamma, (str, int, float)) else getattr(gamma, "__name__", "custom")
    return Estimator(
        f"rotation[gamma={label}]", functools.partial(rotation, gamma=gamma),
        f"rotation trick with γ(e) = {label} (A.9.2)", "γ(e) Rᵀg", "antiparallel",
    )
