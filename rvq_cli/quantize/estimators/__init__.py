"""Gradient estimators through the quantizer: one object per method, in one closed registry.

Every estimator's forward value is the codebook vector q, bit for bit (the decoder sees in
training exactly what it sees when decoding tokens); they differ in the gradient they send to the
encoder output e. Notation (paper §4.2): ê = e/‖e‖, q̂ = q/‖q‖, λ = ‖q‖/‖e‖,
r = (ê + q̂)/‖ê + q̂‖, g = dL/dq̃.

- pointwise (a function of (e, q) alone, :data:`POINTWISE`):
  ``ste`` g (§3); ``rotation`` λRᵀg with R = I − 2rrᵀ + 2q̂êᵀ (§4.1, A.5); ``rotation_unscaled``
  Rᵀg (A.9); ``reflection`` λ(I − 2ssᵀ)g (A.8); the released code's forms ``rotation_released``,
  ``rotation_unscaled_released``; ``ste_raw``.
- codebook-wide: ``ibq``, straight-through on the softmax over all codes (Shi et al. 2024).
- loss-level (need the decoder and the loss): ``hessian`` g + H_q(e − q), ``exact`` ∂L_e/∂e.
- stochastic (a sample in training, the hard code at evaluation): ``gumbel``, a Gumbel-softmax
  mixture of codes; ``diveq``, e plus a simulated distortion towards q (Vali et al. 2025).

Adding an estimator is one module here (its function or :class:`Estimator` subclass with the
hooks it needs, and its ``ENTRIES``) plus its line below.
"""

from __future__ import annotations

from . import diveq, exact, gumbel, hessian, ibq, reflection, rotation, ste
from .base import KINDS, Estimator, Found, Quantized
from .kernels import ANGLE_EPS, NORM_EPS, get_compile, set_compile
from .reflection import reflection_vjp
from .rotation import GAMMAS, GammaLike, rotation_vjp, with_gamma

__all__ = ["ANGLE_EPS", "ESTIMATORS", "GAMMAS", "KINDS", "NORM_EPS", "PAIRWISE", "POINTWISE", "Estimator", "Found",
           "GammaLike", "Quantized", "get_compile", "get_estimator", "reflection_vjp", "rotation_vjp", "set_compile"]

_MODULES = (ste, rotation, reflection, ibq, hessian, exact, gumbel, diveq)
_FOUND = {est.name: est for module in _MODULES for est in module.ENTRIES}
_ORDER = ("ste", "rotation", "rotation_unscaled", "reflection", "rotation_released", "rotation_unscaled_released",
          "ste_raw", "ibq", "hessian", "exact", "gumbel", "diveq", "sf_diveq")  # as `rvq estimators` lists them
assert set(_ORDER) == set(_FOUND), "every estimator module's ENTRIES are listed in _ORDER"
ESTIMATORS: dict[str, Estimator] = {name: _FOUND[name] for name in _ORDER}

# The estimators that are a function of (e, q) alone.
POINTWISE: dict[str, Estimator] = {k: v for k, v in ESTIMATORS.items() if v.pointwise}
# Those that can be applied to (e, q) pairs: the pointwise ones and diveq (a function of e, q and noise).
PAIRWISE: dict[str, Estimator] = {k: v for k, v in ESTIMATORS.items() if v.fn is not None}


def get_estimator(name: str, *, gamma: GammaLike | None = None) -> Estimator:
    """Look up an estimator by name. ``gamma`` picks γ(e) of the rotation family (A.9.2):
    a name from GAMMAS, a float, or a callable ``(e, q) -> γ``; only ``rotation`` takes it."""
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; valid estimators: {', '.join(ESTIMATORS)}")
    if gamma is None:
        return ESTIMATORS[name]
    if name != "rotation":
        raise ValueError(f"gamma is an option of the 'rotation' estimator only, not of {name!r}")
    return with_gamma(gamma)
