"""LPIPS perceptual loss (Zhang et al. 2018) with a VGG16 trunk: the ``lpips`` package's
network and its learned linear heads (shipped inside that package), VGG16 weights found locally.

The ``lpips`` package would download torchvision's ImageNet VGG16 on construction. rvq builds
it with a random trunk (``pnet_rand=True``, no download) and loads the VGG16 weights itself,
safely (safetensors, or ``torch.load(weights_only=True)``), from, in order: an explicit path
(``loss.perceptual_weights``), ``$RVQ_VGG16_WEIGHTS``, or torchvision's cache
(``$TORCH_HOME/hub/checkpoints/vgg16-397923af.pth``). A recipe that needs LPIPS fails before
training starts when none exists, saying where to put the file.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import RvqError

VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
VGG16_FILENAME = "vgg16-397923af.pth"
WEIGHTS_ENV = "RVQ_VGG16_WEIGHTS"
# torchvision's vgg16().features indices -> the lpips trunk's slices (relu1_2 ... relu5_3)
_SLICES = ((1, range(0, 4)), (2, range(4, 9)), (3, range(9, 16)), (4, range(16, 23)), (5, range(23, 30)))


class PerceptualError(RvqError):
    """Missing or unusable VGG16 weights; the message says what to download and where to put it."""


def default_vgg_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILENAME


def find_vgg_weights(path: str | os.PathLike | None = None) -> Path:
    """The VGG16 weights file to use; raises PerceptualError when there is none."""
    for candidate, origin in ((path, "loss.perceptual_weights"), (os.environ.get(WEIGHTS_ENV), f"${WEIGHTS_ENV}")):
        if candidate:
            p = Path(candidate).expanduser()
            if not p.is_file():
                raise PerceptualError(f"The VGG16 weights file {p} ({origin}) does not exist. The perceptual "
                                      f"loss (LPIPS) needs torchvision's ImageNet VGG16 weights ({VGG16_URL}).")
            return p
    if default_vgg_path().is_file():
        return default_vgg_path()
    raise PerceptualError(f"The perceptual loss (LPIPS, loss.perceptual_weight > 0) needs torchvision's ImageNet "
                          f"VGG16 weights, which are not on this machine. Download {VGG16_URL} to "
                          f"{default_vgg_path()}, or set loss.perceptual_weights=PATH (or ${WEIGHTS_ENV}); "
                          "or train without it: loss.perceptual_weight=0.")


def _read(path: Path) -> dict[str, Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt, truncated, or a pickle that refers to code (refused, never run)
        raise PerceptualError(f"{path} could not be read as VGG16 weights ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:200]}). Expected torchvision's {VGG16_FILENAME}.") from None
    if not isinstance(state, dict):
        raise PerceptualError(f"{path} holds a {type(state).__name__}, not a VGG16 state dict.")
    return state


def _trunk_state(vgg: dict[str, Tensor], path: Path) -> dict[str, Tensor]:
    """torchvision VGG16 keys (features.N.weight) -> the lpips trunk's (sliceK.N.weight)."""
    out = {}
    for k, idx in _SLICES:
        for i in idx:
            for p in ("weight", "bias"):
                key = f"features.{i}.{p}"
                if key in vgg:
                    out[f"slice{k}.{i}.{p}"] = vgg[key]
    if len(out) != 26:  # 13 conv layers × (weight, bias)
        raise PerceptualError(f"{path} is not a torchvision VGG16 state dict (found {len(out)} of the 26 "
                              f"convolution tensors of vgg16().features). Expected {VGG16_FILENAME} ({VGG16_URL}).")
    return out


class LPIPS(nn.Module):
    """Frozen LPIPS distance with a VGG16 trunk: ``lpips(x, y)`` -> (B,) for images in [-1, 1]."""

    def __init__(self, vgg_weights: str | os.PathLike):
        super().__init__()
        import lpips

        path = Path(vgg_weights)
        with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=False`
            warnings.simplefilter("ignore", UserWarning)
            self.net = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
        try:
            self.net.net.load_state_dict(_trunk_state(_read(path), path))
        except RuntimeError as err:  # wrong shapes
            raise PerceptualError(f"{path}: the VGG16 weights do not fit ({str(err).splitlines()[0][:200]}).") from None
        self.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> LPIPS:
        return super().train(False)  # always in eval mode (dropout of the linear heads off)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.net(x.float(), y.float()).flatten()  # (B,)


def build_lpips(weights: str | os.PathLike | None = None) -> LPIPS:
    return LPIPS(find_vgg_weights(weights))
