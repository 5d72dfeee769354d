"""Training losses beyond pixels: LPIPS, the PatchGAN discriminator and the VQGAN objective."""

from .discriminator import NORMS, PatchDiscriminator
from .perceptual import LPIPS, PerceptualError, build_lpips, find_vgg_weights
from .vqgan import D_LOSSES, adaptive_weight, generator_loss, hinge_d_loss, pixel_losses, vanilla_d_loss

__all__ = ["D_LOSSES", "LPIPS", "NORMS", "PatchDiscriminator", "PerceptualError", "adaptive_weight",
           "build_lpips", "find_vgg_weights", "generator_loss", "hinge_d_loss", "pixel_losses", "vanilla_d_loss"]
