"""A live check of every estimator on random vectors (used by ``rvq estimators``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .estimators import POINTWISE, Estimator, get_compile, set_compile


@dataclass
class EstimatorCheck:
    name: str
    summary: str
    formula: str
    forward_exact: bool  # q_tilde equals q bit for bit
    angle_error_deg: float  # mean |angle(e, grad_e) − angle(q, g)| in degrees
    norm_ratio: float  # mean ‖grad_e‖ / ‖g‖
    fallbacks: int  # rows that took the degenerate-row fallback


def _angle(a: Tensor, b: Tensor) -> Tensor:
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.acos(cos))


def check_estimators(dim: int = 32, rows: int = 4096, seed: int = 0) -> list[EstimatorCheck]:
    """Run each pointwise estimator once on random (e, q, g) in fp64 and measure it."""
    gen = torch.Generator().manual_seed(seed)
    e, q, g = (torch.randn(rows, dim, generator=gen, dtype=torch.float64) for _ in range(3))
    q = q * 0.5 + e  # codes near their inputs, as after a nearest-code lookup
    out = []
    previous = get_compile()
    set_compile("never")  # a one-off check: compiling would cost more than it saves
    try:
        for est in POINTWISE.values():
            out.append(_check_one(est, e, q, g))
    finally:
        set_compile(previous)
    return out


def _check_one(est: Estimator, e: Tensor, q: Tensor, g: Tensor) -> EstimatorCheck:
    e_ = e.clone().requires_grad_(True)
    q_tilde = est(e_, q)
    q_tilde.backward(g)
    grad = e_.grad
    return EstimatorCheck(
        name=est.name, summary=est.summary, formula=est.formula,
        forward_exact=bool(torch.equal(q_tilde.detach(), q)),
        angle_error_deg=(_angle(e, grad) - _angle(q, g)).abs().mean().item(),
        norm_ratio=(grad.norm(dim=-1) / g.norm(dim=-1)).mean().item(),
        fallbacks=int(est.count_fallbacks(e, q)),
    )
