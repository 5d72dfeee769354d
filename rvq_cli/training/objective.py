"""The training objective of a recipe's ``loss`` section: pixel terms, LPIPS, the quantizer's
loss, and the VQGAN adversarial game (``rvq_cli.losses``), as two functions: the generator's
loss and the discriminator's loss of one micro-batch. The trainer does backward and steps."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import LossConfig
from ..grids import frames
from ..losses import (
    GAN_LOSSES,
    PatchDiscriminator,
    StyleGAN2Discriminator,
    adaptive_weight,
    build_lpips,
    pixel_losses,
    r1_penalty,
)
from .build import adam_kernel

GAN_KEYS = ("g_loss", "d_loss", "adaptive_weight", "logits_real", "logits_fake")


def build_discriminator(loss: LossConfig, in_channels: int, image_size: int) -> nn.Module | None:
    """The discriminator ``loss.gan`` names, for ``image_size``-pixel images (frames), or None
    when the GAN is off."""
    g = loss.gan
    if g.weight == 0:
        return None
    if g.discriminator == "stylegan2":
        s = g.stylegan2
        return StyleGAN2Discriminator(image_size, in_channels, s.channel_multiplier, s.max_channels)
    return PatchDiscriminator(in_channels, g.channels, g.layers, g.norm)


def build_disc_optimizer(disc: nn.Module, loss: LossConfig, lr: float) -> torch.optim.Optimizer:
    g = loss.gan
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[g.optimizer]
    return cls(disc.parameters(), lr=g.lr or lr, betas=tuple(g.betas), weight_decay=g.weight_decay, **adam_kernel())


class Objective:
    """``generator(x, out, last_layer, step)`` and ``discriminator(x, rec, step)``; ``disc`` is the
    (possibly DDP-wrapped) discriminator that trains, ``disc_module`` the bare module the
    generator's loss reads (no DDP: the generator's backward must not enter the discriminator's
    gradient reduction, and its parameters are frozen meanwhile)."""

    def __init__(self, loss: LossConfig, lpips: nn.Module | None, disc: nn.Module | None,
                 disc_module: nn.Module | None, pixel_scale: Tensor | None = None):
        self.cfg, self.lpips, self.disc, self.disc_module = loss, lpips, disc, disc_module
        self.pixel_scale = pixel_scale  # the tokenizer's: the reconstruction term is taken in its space

    def gan_on(self, step: int) -> bool:
        """Whether optimizer step ``step`` (0-based) trains the discriminator and the adversarial term."""
        return self.disc is not None and step >= self.cfg.gan.start

    def r1_on(self, step: int) -> bool:
        """Whether step ``step`` adds the lazy R1 penalty: every ``r1_every``-th step of the GAN."""
        g = self.cfg.gan
        return self.gan_on(step) and g.r1_gamma > 0 and step % g.r1_every == 0

    @property
    def gan_keys(self) -> tuple[str, ...]:
        """The adversarial metrics logged every step (zero where a step does not compute them)."""
        return GAN_KEYS + (("r1",) if self.cfg.gan.r1_gamma > 0 else ())

    def judged(self, img: Tensor) -> Tensor:
        """What the discriminator sees of [-1, 1] images or clips: fp32 frames; StyleGAN2's on
        [0, 1], as enhancing-transformers' (its data are ToTensor images, and R1's γ is relative
        to that range: the same penalty on [-1, 1] pixels would be 4× weaker)."""
        img = frames(img).float()
        return (img + 1) / 2 if self.cfg.gan.discriminator == "stylegan2" else img

    def nll(self, x: Tensor, rec: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Every reconstruction term, weighted and summed (VQGAN's L_nll), and each unweighted."""
        c = self.cfg
        px = pixel_losses(x, rec, c.reconstruction, self.pixel_scale)
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
                g_loss = GAN_LOSSES[g.loss].g(self.disc_module(self.judged(rec)))
            finally:
                self.disc_module.requires_grad_(True)
            lam = (adaptive_weight(loss, g_loss, last_layer, g.max_adaptive) if g.adaptive
                   else torch.ones((), device=x.device))
            loss = loss + lam * g.weight * g_loss
            terms.update(g_loss=g_loss, adaptive_weight=lam)
        return loss, terms

    def discriminator(self, x: Tensor, rec: Tensor, step: int = 0) -> tuple[Tensor, dict[str, Tensor]]:
        """The discriminator's loss on real ``x`` and the (detached) reconstructions, plus on R1
        steps (γ/2)·r1_every·E‖∇_x D(x)‖² (lazy R1 as StyleGAN2 and enhancing-transformers: the
        penalty of every r1_every-th step stands for the steps without it)."""
        g = self.cfg.gan
        r1 = self.r1_on(step)
        x_in = self.judged(x).detach().requires_grad_(r1)  # a leaf of its own: R1's gradient is w.r.t. it
        real, fake = self.disc(x_in), self.disc(self.judged(rec.detach()))
        d_loss = GAN_LOSSES[g.loss].d(real, fake)
        terms = {"logits_real": real.detach().mean(), "logits_fake": fake.detach().mean()}
        if r1:
            terms["r1"] = r1_penalty(real, x_in)
            d_loss = d_loss + g.r1_gamma / 2 * g.r1_every * terms["r1"]
        terms["d_loss"] = d_loss
        return d_loss, terms


def build_objective(loss: LossConfig, device, disc: nn.Module | None, disc_module: nn.Module | None,
                    pixel_scale: Tensor | None = None) -> Objective:
    lpips = build_lpips(loss.perceptual_weights).to(device) if loss.perceptual_weight > 0 else None
    return Objective(loss, lpips, disc, disc_module, pixel_scale)


def describe(loss: LossConfig, beta: float, learned_codebook: bool, vq_loss: str = "vqvae",
             quantizer_loss: bool = True) -> str:
    """The resolved loss terms in one line, printed when training starts (USERS.md: no hidden β);
    ``quantizer_loss`` False (FSQ) leaves out the quantizer's terms, which it does not have."""
    parts = [f"{loss.rec_weight} × {loss.reconstruction}"]
    for w, name in ((loss.laplace_weight, "laplace"), (loss.gaussian_weight, "gaussian"),
                    (loss.perceptual_weight, "LPIPS")):
        if w:
            parts.append(f"{w} × {name}")
    if vq_loss == "taming_legacy":  # taming's legacy quantizer: β on the codebook term
        vq = "commitment" + (f" + {beta} × codebook" if learned_codebook else "")
    else:
        vq = f"{beta} × commitment" + (" + codebook" if learned_codebook else "")
    if quantizer_loss:
        parts.append(f"{loss.codebook_weight} × ({vq})")
    g = loss.gan
    if g.weight:
        lam = f"λ (adaptive, ≤ {g.max_adaptive:g}) × " if g.adaptive else ""
        disc = (f"StyleGAN2 (channel multiplier {g.stylegan2.channel_multiplier}, ≤ {g.stylegan2.max_channels} "
                "channels)" if g.discriminator == "stylegan2" else f"PatchGAN {g.layers} layers, {g.norm} norm")
        r1 = f", R1 γ {g.r1_gamma:g} every {g.r1_every} steps" if g.r1_gamma else ""
        parts.append(f"{lam}{g.weight} × GAN ({g.loss}, from step {g.start}, {disc}{r1}, {g.optimizer} "
                     f"betas {tuple(g.betas)}" + (f" wd {g.weight_decay:g}" if g.weight_decay else "") + ")")
    return " + ".join(parts)
