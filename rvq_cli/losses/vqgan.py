"""The VQGAN objective (Esser et al. 2021, §3.2) and ViT-VQGAN's reconstruction terms.

Generator:      L = Σ pixel terms + w_p·LPIPS + w_q·L_VQ + [step ≥ start]·λ·w_gan·L_G
  L_G = −mean D(x̂) (hinge, vanilla: taming's) or mean softplus(−D(x̂)) (non_saturating)
  λ   = ‖∇_w L_nll‖ / (‖∇_w L_G‖ + 1e-4), w the decoder's last layer, clamped to [0, 1e4] and
        detached (§3.2, eq. 7); L_nll is everything but the VQ and GAN terms.
Discriminator:  hinge ½(mean relu(1 − D(x)) + mean relu(1 + D(x̂)))  or
                vanilla ½(mean softplus(−D(x)) + mean softplus(D(x̂)))
                [+ (γ/2)·k·E‖∇_x D(x)‖² every k-th step: lazy R1 on real images]
``loss`` names the pair: ``hinge`` and ``vanilla`` (taming: L_G = −mean D(x̂) for both) or
``non_saturating`` (Goodfellow et al. 2014 §3, StyleGAN2, enhancing-transformers' "vanilla"):
vanilla's discriminator loss with L_G = mean softplus(−D(x̂)).

Pixel terms on [-1, 1] images: ``l2`` (MSE) or ``l1``, weight ``rec_weight``; plus ViT-VQGAN's
``laplace`` and ``gaussian`` terms as its open implementation (enhancing-transformers) defines
them: mean |x̂ − x| and mean (x̂ − x)² on [0, 1] images — the negative log-likelihoods of a
Laplace and a Gaussian with unit scale, up to constants.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

ADAPTIVE_EPS, ADAPTIVE_MAX = 1e-4, 1e4


def hinge_d_loss(real: Tensor, fake: Tensor) -> Tensor:
    return 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())


def vanilla_d_loss(real: Tensor, fake: Tensor) -> Tensor:
    return 0.5 * (F.softplus(-real).mean() + F.softplus(fake).mean())


def generator_loss(fake: Tensor) -> Tensor:
    """−mean D(x̂): taming's generator loss for hinge and vanilla alike."""
    return -fake.mean()


def non_saturating_g_loss(fake: Tensor) -> Tensor:
    """mean softplus(−D(x̂)) = −mean log σ(D(x̂)): the non-saturating generator loss."""
    return F.softplus(-fake).mean()


@dataclass(frozen=True)
class GANLoss:
    """A discriminator loss ``d(real, fake)`` and the generator's loss ``g(fake)`` it pairs with."""

    d: Callable[[Tensor, Tensor], Tensor]
    g: Callable[[Tensor], Tensor]


GAN_LOSSES = {
    "hinge": GANLoss(hinge_d_loss, generator_loss),
    "vanilla": GANLoss(vanilla_d_loss, generator_loss),
    "non_saturating": GANLoss(vanilla_d_loss, non_saturating_g_loss),
}
D_LOSSES = {name: pair.d for name, pair in GAN_LOSSES.items()}


def r1_penalty(real_logits: Tensor, real: Tensor) -> Tensor:
    """E_batch ‖∇_x Σ D(x)‖² over each sample's pixels at the real images ``real`` (a leaf that
    requires grad), in fp32: the R1 penalty (Mescheder et al. 2018, eq. 9) without its γ/2. The
    graph is kept (create_graph) so that the discriminator's backward differentiates it."""
    (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
    return grad.float().square().flatten(1).sum(1).mean()


def adaptive_weight(nll: Tensor, g_loss: Tensor, last_layer: Tensor, max_weight: float = ADAPTIVE_MAX) -> Tensor:
    """λ = ‖∇_w nll‖ / (‖∇_w g_loss‖ + 1e-4), clamped to [0, max_weight], detached (VQGAN eq. 7)."""
    g_nll = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_adv = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    lam = g_nll.float().norm() / (g_adv.float().norm() + ADAPTIVE_EPS)
    return lam.clamp(0.0, max_weight).detach()


def pixel_losses(x: Tensor, rec: Tensor, kind: str, scale: Tensor | None = None) -> dict[str, Tensor]:
    """Every pixel term, unweighted, in fp32: rec (the recipe's l2/l1 on [-1, 1] images, or in the
    model's space when ``scale``, the tokenizer's per-channel ``pixel_scale``, is given: the
    difference divided by it), laplace and gaussian (ViT-VQGAN's, on [0, 1] images)."""
    x, rec = x.float(), rec.float()
    diff01 = (rec - x) / 2  # the same difference on [0, 1] images
    if scale is not None:  # the model's space: the shift cancels in the difference
        rec, x = rec / scale.float(), x / scale.float()
    return {
        "rec": F.mse_loss(rec, x) if kind == "l2" else F.l1_loss(rec, x),
        "laplace": diff01.abs().mean(),
        "gaussian": diff01.pow(2).mean(),
    }
