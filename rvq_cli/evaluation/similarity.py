"""SSIM and LPIPS of reconstructions, as tokenizer papers report them.

Both are taken per image (per frame of a clip) on the 8-bit original and the 8-bit
reconstruction, the images PSNR and r-FID see, then averaged over the set:

  ssim        torchmetrics' ``structural_similarity_index_measure`` (Wang et al. 2004): RGB in
              [0, 1], data range 1, Gaussian window 11 × 11 with σ = 1.5, K1 = 0.01, K2 = 0.03,
              the mean of the SSIM map over the valid (unpadded) region, per image
  lpips_alex  LPIPS v0.1 with the AlexNet trunk (the ``lpips`` package's default, what papers
              mean by "LPIPS"), images in [-1, 1]
  lpips_vgg   the same with the VGG16 trunk

torchmetrics is used for SSIM rather than a hand-written window: it is the maintained
implementation that agrees with scikit-image's ``structural_similarity`` (tested), and it runs
batched on the GPU. The LPIPS trunks' ImageNet weights are found as the perceptual loss finds
VGG16's (``rvq_cli.losses.perceptual``); a trunk whose weights are not on the machine is skipped
with a note saying where to put them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..losses.perceptual import LPIPS, TRUNKS, PerceptualError, find_trunk_weights

__all__ = ["SSIM_SETTINGS", "LpipsSet", "lpips_settings", "ssim"]

SSIM_SETTINGS = {"library": "torchmetrics", "images": "8-bit RGB as [0, 1]", "data_range": 1.0,
                 "gaussian_kernel": True, "kernel_size": 11, "sigma": 1.5, "k1": 0.01, "k2": 0.03,
                 "reduction": "mean of the SSIM map per image, then the mean over images"}
LPIPS_NETS = ("alex", "vgg")


def ssim(x8: Tensor, r8: Tensor) -> Tensor:
    """Per-image SSIM (B,) of 8-bit images (B, C, H, W), with :data:`SSIM_SETTINGS`."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    s = SSIM_SETTINGS
    x, r = x8.float() / 255.0, r8.float() / 255.0
    return structural_similarity_index_measure(r, x, gaussian_kernel=s["gaussian_kernel"], sigma=s["sigma"],
                                               kernel_size=s["kernel_size"], data_range=s["data_range"],
                                               k1=s["k1"], k2=s["k2"], reduction="none")


class LpipsSet:
    """The LPIPS networks whose trunk weights were found, by net name ("alex", "vgg")."""

    def __init__(self, device, vgg_path=None, notes: list[str] | None = None, image_size: int | None = None):
        self.nets: dict[str, LPIPS] = {}
        self.files: dict[str, Path] = {}
        notes = [] if notes is None else notes
        for net in LPIPS_NETS:
            t = TRUNKS[net]
            if image_size is not None and image_size < t.min_size:
                notes.append(f"lpips_{net} skipped: the {t.title} trunk needs images of at least {t.min_size} pixels, "
                             f"these are {image_size}.")
                continue
            try:
                path = find_trunk_weights(net, vgg_path if net == "vgg" else None)
            except PerceptualError as err:
                notes.append(f"lpips_{net} skipped: {err}")
                continue
            if path is None:
                notes.append(f"lpips_{net} skipped: torchvision's ImageNet {t.title} weights are not on this machine; "
                             f"download {t.url} to {t.default_path()}, or set ${t.env}=PATH.")
                continue
            self.nets[net] = LPIPS(path, net=net).to(device).eval()
            self.files[net] = path

    def __call__(self, x8: Tensor, r8: Tensor) -> dict[str, Tensor]:
        """Per-image LPIPS (B,) of 8-bit images, by metric name (lpips_alex, lpips_vgg)."""
        x, r = x8.float() / 127.5 - 1.0, r8.float() / 127.5 - 1.0
        with torch.no_grad():
            return {f"lpips_{net}": lp(x, r) for net, lp in self.nets.items()}


def lpips_settings(found: LpipsSet) -> dict:
    """How LPIPS was measured, for eval.json."""
    import lpips

    return {"version": "0.1", "package": f"lpips {getattr(lpips, '__version__', '0.1.4')}",
            "images": "8-bit RGB as [-1, 1]", "trunks": {net: str(p) for net, p in found.files.items()}}
