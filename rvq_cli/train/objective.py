"""The training objective of a recipe's ``loss`` section: pixel terms, LPIPS, the quantizer's
loss, and the VQGAN adversarial game (``rvq_cli.losses``), as two functions: the generator's
loss and the discriminator's loss of one micro-batch. The trainer does backward and steps."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import LossConfig
from ..losses import D_LOSSES, PatchDiscriminator, adaptive_weight, build_lpips, generator_loss, pixel_losses

GAN_KEYS = ("g_loss", "d_loss", "adaptive_weight", "logits_real", "logits_fake")


def frames(x: Tensor) -> Tensor:
    """Images as they are; clips (B, C, T, H, W) as their B·T frames (B·T, C, H, W): LPIPS and the
    discriminator judge video frame by frame (Table 11)."""
    if x.dim() == 5:
        b, c, t, h, w = x.shape
        return x.transpose(1, 2).reshape(b * t, c, h, w)
    return x


def build_discriminator(loss: LossConfig, in_channels: int) -> PatchDiscriminator | None:
    g = loss.gan
    return PatchDiscriminator(in_channels, g.channels, g.layers, g.norm) if g.weight > 0 else None


def build_disc_optimizer(disc: nn.Module, loss: LossConfig, lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(disc.parameters(), lr=loss.gan.lr or lr, betas=tuple(loss.gan.betas))


class Objective:
    """``generator(x, out, last_layer, step)`` and ``discriminator(x, rec)``; ``disc`` is the
    (possibly DDP-wrapped) discriminator that trains, ``disc_module`` the bare module the
    generator's loss reads (no DDP: the generator's backward must not enter the discriminator's
    gradient reduction, and its parameters are frozen meanwhile)."""

    def __init__(self, loss: LossConfig, lpips: nn.Module | None, disc: nn.Module | None,
                 disc_module: nn.Module | None):
        self.cfg, self.lpips, self.disc, self.disc_module = loss, lpips, disc, disc_module

    def gan_on(self, step: int) -> bool:
        """Whether optimizer step ``step`` (0-based) trains the discriminator and the adversarial term."""
        return self.disc is not None and step >= self.cfg.gan.start

    def nll(self, x: Tensor, rec: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Every reconstruction term, weighted and summed (VQGAN's L_nll), and each unweighted."""
        c = self.cfg
        px = pixel_losses(x, rec, c.reconstruction)
        total = c.rec_weight * px["rec"] + c.laplace_weight * px["laplace"] + c.gaussian_weight * px["gaussian"]
        terms = {"rec_loss": px["rec"]}
        if c.laplace_weight:
            terms["laplace"] = px["laplace"]
        if c.gaussian_weight:
            terms["gaussian"] = px["gaussian"]
        if self.lpips is not None:
            terms["perceptual"] = self.lpips(frames(x), frames(rec)).mean()
            total = total + c.perceptual_weight * terms["perceptual"]
        return total, terms

    def generator(self, x: Tensor, out, last_layer: Tensor, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        """The tokenizer's loss of one micro-batch and its logged terms."""
        loss, terms = self.decoder_loss(x, out.reconstruction, last_layer, step)
        return loss + self.cfg.codebook_weight * out.quantize.loss, terms

    def decoder_loss(self, x: Tensor, rec: Tensor, last_layer: Tensor, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        """The part of the loss that depends on the reconstruction ``rec``: L_nll and, once the
        GAN is on, λ × weight × the generator's adversarial loss."""
        loss, terms = self.nll(x, rec)
        if self.gan_on(step):
            g = self.cfg.gan
            self.disc_module.requires_grad_(False)
            try:
                g_loss = generator_loss(self.disc_module(frames(rec).float()))
            finally:
                self.disc_module.requires_grad_(True)
            lam = (adaptive_weight(loss, g_loss, last_layer, g.max_adaptive) if g.adaptive
                   else torch.ones((), device=x.device))
            loss = loss + lam * g.weight * g_loss
            terms.update(g_loss=g_loss, adaptive_weight=lam)
        return loss, terms

    def discriminator(self, x: Tensor, rec: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The discriminator's loss on real ``x`` and the (detached) reconstructions."""
        real, fake = self.disc(frames(x).float()), self.disc(frames(rec).detach().float())
        d_loss = D_LOSSES[self.cfg.gan.loss](real, fake)
        return d_loss, {"d_loss": d_loss, "logits_real": real.mean(), "logits_fake": fake.mean()}


def build_objective(loss: LossConfig, device, disc: nn.Module | None, disc_module: nn.Module | None) -> Objective:
    lpips = build_lpips(loss.perceptual_weights).to(device) if loss.perceptual_weight > 0 else None
    return Objective(loss, lpips, disc, disc_module)


def describe(loss: LossConfig, beta: float, learned_codebook: bool, vq_loss: str = "vqvae") -> str:
    """The resolved loss terms in one line, printed when training starts (USERS.md: no hidden β)."""
    parts = [f"{loss.rec_weight} × {loss.reconstruction}"]
    for w, name in ((loss.laplace_weight, "laplace"), (loss.gaussian_weight, "gaussian"),
                    (loss.perceptual_weight, "LPIPS")):
        if w:
            parts.append(f"{w} × {name}")
    if vq_loss == "taming_legacy":  # taming's legacy quantizer: β on the codebook term
        vq = "commitment" + (f" + {beta} × codebook" if learned_codebook else "")
    else:
        vq = f"{beta} × commitment" + (" + codebook" if learned_codebook else "")
    parts.append(f"{loss.codebook_weight} × ({vq})")
    g = loss.gan
    if g.weight:
        lam = f"λ (adaptive, ≤ {g.max_adaptive:g}) × " if g.adaptive else ""
        parts.append(f"{lam}{g.weight} × GAN ({g.loss}, from step {g.start}, PatchGAN {g.layers} layers, "
                     f"{g.norm} norm)")
    return " + ".join(parts)
