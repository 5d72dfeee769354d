"""LPIPS (Zhang et al. 2018): the ``lpips`` package's network and its learned linear heads
(shipped inside that package), with a VGG16 trunk (the perceptual loss, and a metric) or an
AlexNet trunk (the metric papers report), the trunk's ImageNet weights found locally.

The ``lpips`` package would download torchvision's ImageNet weights on construction. rvq builds
it with a random trunk (``pnet_rand=True``, no download) and loads the trunk's weights itself,
safely (safetensors, or ``torch.load(weights_only=True)``), from, in order: an explicit path
(VGG16: ``loss.perceptual_weights``), the environment (``$RVQ_VGG16_WEIGHTS``,
``$RVQ_ALEXNET_WEIGHTS``), or torchvision's cache (``$TORCH_HOME/hub/checkpoints/`` with
torchvision's file name). A recipe that needs LPIPS fails before training starts when none
exists, saying where to put the file; ``rvq eval`` skips the metric with a note.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import RvqError

VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
VGG16_FILENAME = "vgg16-397923af.pth"
WEIGHTS_ENV = "RVQ_VGG16_WEIGHTS"


@dataclass(frozen=True)
class Trunk:
    """One of the lpips package's trunks: torchvision's weights file, and how its ``features``
    indices fall into the lpips network's five slices."""

    name: str  # the lpips package's net name
    title: str
    filename: str
    url: str
    env: str
    slices: tuple[tuple[int, range], ...]
    convs: int  # convolution layers in those slices
    min_size: int  # the smallest image side the trunk's strides and poolings take

    def default_path(self) -> Path:
        return Path(torch.hub.get_dir()) / "checkpoints" / self.filename


TRUNKS = {
    # relu1_2 ... relu5_3 of vgg16().features
    "vgg": Trunk("vgg", "VGG16", VGG16_FILENAME, VGG16_URL, WEIGHTS_ENV,
                 ((1, range(0, 4)), (2, range(4, 9)), (3, range(9, 16)), (4, range(16, 23)), (5, range(23, 30))),
                 convs=13, min_size=16),
    # relu1 ... relu5 of alexnet().features
    "alex": Trunk("alex", "AlexNet", "alexnet-owt-7be5be79.pth",
                  "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth", "RVQ_ALEXNET_WEIGHTS",
                  ((1, range(0, 2)), (2, range(2, 5)), (3, range(5, 8)), (4, range(8, 10)), (5, range(10, 12))),
                  convs=5, min_size=31),
}


class PerceptualError(RvqError):
    """Missing or unusable VGG16 weights; the message says what to download and where to put it."""


def default_vgg_path() -> Path:
    return TRUNKS["vgg"].default_path()


def find_trunk_weights(net: str, path: str | os.PathLike | None = None,
                       given_as: str = "the path given") -> Path | None:
    """The trunk weights file of ``net`` ("vgg", "alex") to use: ``path`` (named ``given_as`` in
    messages), the trunk's environment variable, or torchvision's cache; None when none is set
    and the cache has none. A path that is set but missing is a PerceptualError."""
    trunk = TRUNKS[net]
    for candidate, origin in ((path, given_as), (os.environ.get(trunk.env), f"${trunk.env}")):
        if candidate:
            p = Path(candidate).expanduser()
            if not p.is_file():
                raise PerceptualError(f"The {trunk.title} weights file {p} ({origin}) does not exist; LPIPS needs "
                                      f"torchvision's ImageNet {trunk.title} weights ({trunk.url}).")
            return p
    return trunk.default_path() if trunk.default_path().is_file() else None


def find_vgg_weights(path: str | os.PathLike | None = None) -> Path:
    """The VGG16 weights file of the perceptual loss (:func:`find_trunk_weights`, ``path`` being
    ``loss.perceptual_weights``); raises PerceptualError when there is none."""
    found = find_trunk_weights("vgg", path, "loss.perceptual_weights")
    if found is None:
        raise PerceptualError(f"The perceptual loss (LPIPS, loss.perceptual_weight > 0) needs torchvision's ImageNet "
                              f"VGG16 weights, which are not on this machine. Download {VGG16_URL} to "
                              f"{default_vgg_path()}, or set loss.perceptual_weights=PATH (or ${WEIGHTS_ENV}); "
                              "or train without it: loss.perceptual_weight=0.")
    return found


def _read(path: Path, trunk: Trunk = TRUNKS["vgg"]) -> dict[str, Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt, truncated, or a pickle that refers to code (refused, never run)
        raise PerceptualError(f"{path} could not be read as {trunk.title} weights ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:200]}). Expected torchvision's {trunk.filename}.") from None
    if not isinstance(state, dict):
        raise PerceptualError(f"{path} holds a {type(state).__name__}, not a {trunk.title} state dict.")
    return state


def _trunk_state(state: dict[str, Tensor], path: Path, trunk: Trunk) -> dict[str, Tensor]:
    """torchvision keys (features.N.weight) -> the lpips trunk's (sliceK.N.weight)."""
    out = {}
    for k, idx in trunk.slices:
        for i in idx:
            for p in ("weight", "bias"):
                key = f"features.{i}.{p}"
                if key in state:
                    out[f"slice{k}.{i}.{p}"] = state[key]
    if len(out) != 2 * trunk.convs:  # conv layers × (weight, bias)
        raise PerceptualError(f"{path} is not a torchvision {trunk.title} state dict (found {len(out)} of the "
                              f"{2 * trunk.convs} convolution tensors of {trunk.title.lower()}().features). Expected "
                              f"{trunk.filename} ({trunk.url}).")
    return out


class LPIPS(nn.Module):
    """Frozen LPIPS distance: ``lpips(x, y)`` -> (B,) for images in [-1, 1], with the VGG16
    trunk (``net="vgg"``) or AlexNet's (``net="alex"``) from ``weights``."""

    def __init__(self, weights: str | os.PathLike, net: str = "vgg"):
        super().__init__()
        import lpips

        path, trunk = Path(weights), TRUNKS[net]
        with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=False`
            warnings.simplefilter("ignore", UserWarning)
            self.net = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
        try:
            self.net.net.load_state_dict(_trunk_state(_read(path, trunk), path, trunk))
        except RuntimeError as err:  # wrong shapes: name the first tensor that does not fit
            lines = [line.strip() for line in str(err).splitlines() if "size mismatch" in line] or [str(err)]
            raise PerceptualError(f"{path}: these are not torchvision's {trunk.title} weights ({lines[0][:200]}). "
                                  f"Expected {trunk.filename} ({trunk.url}).") from None
        self.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> LPIPS:
        return super().train(False)  # always in eval mode (dropout of the linear heads off)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.net(x.float(), y.float()).flatten()  # (B,)


def build_lpips(weights: str | os.PathLike | None = None) -> LPIPS:
    return LPIPS(find_vgg_weights(weights))
