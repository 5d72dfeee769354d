"""PatchGAN discriminator (Isola et al. 2017, pix2pix's NLayerDiscriminator; as in VQGAN).

``layers`` stride-2 4×4 convolutions (channels ``channels`` × 1, 2, 4, 8, 8, ...), one stride-1
4×4 convolution, and a final 4×4 convolution to one logit per patch: (B, 1, h, w).

Normalisation: ``batch`` (taming's choice; under several processes DDP broadcasts rank 0's
running statistics every step, so the ranks stay identical), ``group`` (no batch statistics:
results do not depend on how a batch is split, which makes gradient accumulation exact), or
``none``.
"""

from __future__ import annotations

from torch import Tensor, nn

NORMS = ("batch", "group", "none")
DISCRIMINATORS = ("patchgan", "stylegan2")  # what loss.gan.discriminator names: this PatchGAN, stylegan.py's


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(32, channels), channels)
    return nn.Identity()


class PatchDiscriminator(nn.Module):
    def __init__(self, in_channels: int = 3, channels: int = 64, layers: int = 3, norm: str = "batch"):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"unknown discriminator norm {norm!r}; valid: {', '.join(NORMS)}")
        if layers < 1 or channels < 1:
            raise ValueError(f"need layers >= 1 and channels >= 1, got layers={layers}, channels={channels}")
        bias = norm == "none"  # a norm layer's shift makes the conv bias redundant
        blocks: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        c = channels
        for n in range(1, layers + 1):
            stride = 2 if n < layers else 1
            c_out = channels * min(2**n, 8)
            blocks += [nn.Conv2d(c, c_out, 4, stride, 1, bias=bias), _norm(norm, c_out), nn.LeakyReLU(0.2, True)]
            c = c_out
        blocks.append(nn.Conv2d(c, 1, 4, 1, 1))  # one logit per patch
        self.main = nn.Sequential(*blocks)
        self.apply(_init)

    def forward(self, x: Tensor) -> Tensor:
        return self.main(x)


def _init(m: nn.Module) -> None:
    """DCGAN initialisation as taming's ``weights_init``: conv weights N(0, 0.02), their biases
    left at PyTorch's default U(±1/√fan_in); norm scale N(1, 0.02), shift 0."""
    if isinstance(m, nn.Conv2d):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)
