"""Training losses beyond pixels: LPIPS, the PatchGAN and StyleGAN2 discriminators and the VQGAN objective."""

from .discriminator import DISCRIMINATORS, NORMS, PatchDiscriminator
from .perceptual import LPIPS, PerceptualError, build_lpips, find_vgg_weights
from .stylegan import StyleGAN2Discriminator
from .vqgan import (
    D_LOSSES,
    GAN_LOSSES,
    GANLoss,
    adaptive_weight,
    generator_loss,
    hinge_d_loss,
    non_saturating_g_loss,
    pixel_losses,
    r1_penalty,
    vanilla_d_loss,
)

__all__ = ["DISCRIMINATORS", "D_LOSSES", "GAN_LOSSES", "GANLoss", "LPIPS", "NORMS", "PatchDiscriminator",
           "PerceptualError", "StyleGAN2Discriminator", "adaptive_weight", "build_lpips", "find_vgg_weights",
           "generator_loss", "hinge_d_loss", "non_saturating_g_loss", "pixel_losses", "r1_penalty", "vanilla_d_loss"]
