"""The VQGAN objective (Esser et al. 2021, §3.2) and ViT-VQGAN's reconstruction terms.

Generator:      L = Σ pixel terms + w_p·LPIPS + w_q·L_VQ + [step ≥ start]·λ·w_gan·L_G
  L_G = −mean D(x̂) (taming uses it for hinge and vanilla alike)
  λ   = ‖∇_w L_nll‖ / (‖∇_w L_G‖ + 1e-4), w the decoder's last layer, clamped to [0, 1e4] and
        detached (§3.2, eq. 7); L_nll is everything but the VQ and GAN terms.
Discriminator:  hinge ½(mean relu(1 − D(x)) + mean relu(1 + D(x̂)))  or
                vanilla ½(mean softplus(−D(x)) + mean softplus(D(x̂)))

Pixel terms on [-1, 1] images: ``l2`` (MSE) or ``l1``, weight ``rec_weight``; plus ViT-VQGAN's
``laplace`` and ``gaussian`` terms as its open implementation (enhancing-transformers) defines
them: mean |x̂ − x| and mean (x̂ − x)² on [0, 1] images — the negative log-likelihoods of a
Laplace and a Gaussian with unit scale, up to constants.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

ADAPTIVE_EPS, ADAPTIVE_MAX = 1e-4, 1e4


def hinge_d_loss(real: Tensor, fake: Tensor) -> Tensor:
    return 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())


def vanilla_d_loss(real: Tensor, fake: Tensor) -> Tensor:
    return 0.5 * (F.softplus(-real).mean() + F.softplus(fake).mean())


D_LOSSES = {"hinge": hinge_d_loss, "vanilla": vanilla_d_loss}


def generator_loss(fake: Tensor) -> Tensor:
    return -fake.mean()


def adaptive_weight(nll: Tensor, g_loss: Tensor, last_layer: Tensor, max_weight: float = ADAPTIVE_MAX) -> Tensor:
    """λ = ‖∇_w nll‖ / (‖∇_w g_loss‖ + 1e-4), clamped to [0, max_weight], detached (VQGAN eq. 7)."""
    g_nll = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_adv = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    lam = g_nll.float().norm() / (g_adv.float().norm() + ADAPTIVE_EPS)
    return lam.clamp(0.0, max_weight).detach()


def pixel_losses(x: Tensor, rec: Tensor, kind: str) -> dict[str, Tensor]:
    """Every pixel term, unweighted, in fp32: rec (the recipe's l2/l1 on [-1, 1]), laplace and
    gaussian (ViT-VQGAN's, on [0, 1] images)."""
    x, rec = x.float(), rec.float()
    diff01 = (rec - x) / 2  # the same difference on [0, 1] images
    return {
        "rec": F.mse_loss(rec, x) if kind == "l2" else F.l1_loss(rec, x),
        "laplace": diff01.abs().mean(),
        "gaussian": diff01.pow(2).mean(),
    }
