"""DiVeQ (Vali, Bäckström, Solin, "DiVeQ: Differentiable Vector Quantization Using the
Reparameterization Trick", arXiv 2509.26469): quantization as the input plus a simulated
distortion vector, q̃ = e + ‖q − e‖ · sg(v_d / ‖v_d‖) with v_d = (q − e) + v, v ~ N(0, σ²I).

The direction of the distortion is the direction to the chosen code, up to the small noise v, and
carries no gradient; its magnitude ‖q − e‖ does, so the loss reaches both the encoder output e and
(with a learned codebook) the chosen code q. In training the decoder reads that sample, which lies
on the sphere of radius ‖q − e‖ around e within about σ of q (so not q bit for bit, unlike the
pointwise estimators); at evaluation it reads the code of the index, hard, as the tokens do.
vector-quantize-pytorch implements the same map as ``directional_reparam``.

The noise: the paper writes v ~ N(0, σ²I); the authors' code (AaltoML/DiVeQ) passes its
``noise_var = 1e-3`` to ``Normal(0, ·)`` as the scale, so σ = 1e-3, rvq's default
``diveq_noise_std``; vector-quantize-pytorch's ``directional_reparam_variance`` is σ² (default
5e-3, σ ≈ 0.071). The authors' code also initialises the codebook uniformly in [0, 1/K) and
replaces codes used by fewer than 1% of the rows every 100 steps; rvq leaves both to the recipe
(``init``, ``dead_code_threshold``).

rvq keeps the recipe's commitment and codebook terms as for every estimator; the paper trains
without them, with a learned codebook (``update: learned``, ``beta: 0``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import codebook as cb
from .base import Estimator, Found, Quantized

__all__ = ["DIVEQ_NOISE_STD", "ENTRIES", "DiVeQ", "SFDiVeQ", "diveq", "segment_dither", "sf_diveq"]

DIVEQ_NOISE_STD = 1e-3  # σ, the direction noise's standard deviation (the authors' code: noise_var = 0.001)


def diveq(e: Tensor, q: Tensor, std: float = DIVEQ_NOISE_STD, generator: torch.Generator | None = None) -> Tensor:
    """e + ‖q − e‖ · sg(unit(q − e + v)), v ~ N(0, std²·I), for rows (..., D). Rows with q = e give
    e (= q) and a zero gradient through the magnitude."""
    d = q - e  # the quantization error, the distortion to simulate
    noise = torch.randn(d.shape, generator=generator, device=d.device, dtype=d.dtype) * std
    u = F.normalize(d + noise, dim=-1, eps=1e-6).detach()  # its direction, noised; no gradient
    return e + u * d.norm(dim=-1, keepdim=True)


class DiVeQ(Estimator):
    def quantize(self, layer, found: Found) -> Quantized:
        """The DiVeQ sample in code space: the gradient reaches e (watched for cos(grad_e, g))
        and, through q, a learned codebook."""
        return Quantized(diveq(layer.watch_gradients(found.e), found.q, layer.diveq_noise_std))



# ---------------------------------------------------------------- SF-DiVeQ


def segment_dither(codes: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """(points, λ): one point drawn uniformly on each segment between consecutive codes,
    (1 − λ_i) c_i + λ_i c_{i+1}, i = 0..K−2, λ ~ U(0, 1) (K − 1, 1)."""
    lam = torch.rand(codes.shape[0] - 1, 1, generator=generator, device=codes.device, dtype=codes.dtype)
    return (1 - lam) * codes[:-1] + lam * codes[1:], lam


def sf_diveq(e: Tensor, c1: Tensor, c2: Tensor, lam: Tensor, std: float = DIVEQ_NOISE_STD,
             generator: torch.Generator | None = None) -> Tensor:
    """e + (1 − λ)‖c1 − e‖ sg(unit(c1 − e + v1)) + λ‖c2 − e‖ sg(unit(c2 − e + v2)): DiVeQ's
    simulated distortion toward both ends of the row's segment, weighted by its dither λ (N, 1)."""
    def towards(c: Tensor) -> Tensor:
        d = c - e
        noise = torch.randn(d.shape, generator=generator, device=d.device, dtype=d.dtype) * std
        return d.norm(dim=-1, keepdim=True) * F.normalize(d + noise, dim=-1, eps=1e-12).detach()

    return e + (1 - lam) * towards(c1) + lam * towards(c2)


class SFDiVeQ(Estimator):
    """The rows are assigned to segments of the curve through the codes in index order: in training,
    to the nearest of one random point per segment; the token is the segment's first code."""

    def indices(self, layer, e: Tensor, codes: Tensor) -> Tensor | None:
        if not layer.training:
            return None  # evaluation: the nearest code, which the tokens decode to
        points, lam = segment_dither(codes)
        idx = cb.nearest_codes(e, points, "euclidean", layer.chunk)  # (N,) in 0..K−2
        layer.segment_dither = lam  # read by quantize in the same forward
        return idx

    def quantize(self, layer, found: Found) -> Quantized:
        lam = layer.segment_dither[found.indices]  # (N, 1)
        c2 = F.embedding(found.indices + 1, found.codes)
        e = layer.watch_gradients(found.e)
        return Quantized(sf_diveq(e, found.q, c2, lam, layer.diveq_noise_std))


ENTRIES = (
    DiVeQ(
        "diveq", diveq, "DiVeQ: e plus the distortion ‖q − e‖ along the (noised, stop-gradient) direction to q; "
        "the gradient flows through the distortion's magnitude to e and to a learned codebook; hard code at eval",
        "g − (q − e)(u·g)/‖q − e‖, u = sg(unit(q − e + v))", kind="stochastic",
        section="Vali et al. 2025 (arXiv 2509.26469)", own_options=("diveq_noise_std",),
    ),
    SFDiVeQ(
        "sf_diveq", None, "SF-DiVeQ: rows assigned to the curve through consecutive codes (a random point per "
        "segment in training), DiVeQ's distortion toward both ends of the segment; the nearest code at eval",
        "through both ends' distortion magnitudes", kind="stochastic",
        section="Vali et al. 2025 (arXiv 2509.26469)", own_options=(),
    ),
)
