"""The straight-through estimator (§3): q̃ = e + sg(q − e), so grad_e = g. ``ste_raw`` hands g to
the latents before the cosine lookup's l2-normalisation (enhancing-transformers' ViT-VQGAN)."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Estimator, check_pair

__all__ = ["ENTRIES", "ste"]


class _STE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, e: Tensor, q: Tensor) -> Tensor:
        return q  # returned as-is: autograd makes it a view, no copy

    @staticmethod
    def backward(ctx, g: Tensor):
        return g, None


def ste(e: Tensor, q: Tensor) -> Tensor:
    """Straight-through estimator (§3): forward q, backward copies g to e."""
    check_pair(e, q)
    return _STE.apply(e, q)



ENTRIES = (
    Estimator("ste", ste, "straight-through: copies the gradient at q to e", "g", section="§3"),
    Estimator(
        "ste_raw", ste, "straight-through to the unnormalised encoder output under cosine lookup, as "
        "enhancing-transformers' ViT-VQGAN (the Tables 4-5 STE baseline); same as ste for euclidean lookup",
        "g (to e before l2-normalisation)", section="Tables 4-5 code", acts_on="raw",
    ),
)
