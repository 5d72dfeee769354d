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

from .base import Estimator, Found, Quantized

__all__ = ["DIVEQ_NOISE_STD", "ENTRIES", "DiVeQ", "diveq"]

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


ENTRIES = (
    DiVeQ(
        "diveq", diveq, "DiVeQ: e plus the distortion ‖q − e‖ along the (noised, stop-gradient) direction to q; "
        "the gradient flows through the distortion's magnitude to e and to a learned codebook; hard code at eval",
        "g − (q − e)(u·g)/‖q − e‖, u = sg(unit(q − e + v))", kind="stochastic",
        section="Vali et al. 2025 (arXiv 2509.26469)", own_options=("diveq_noise_std",),
    ),
)
