"""StyleGAN2's residual discriminator (Karras et al. 2020, config E/F), as enhancing-transformers'
``StyleDiscriminator`` (losses/layers.py): the discriminator of the Table 4 code.

Square (B, C, S, S) images, S a power of two ≥ 8, fixed at construction (the head is a linear
map of 4×4 features):

  1×1 conv, C → ch(S), act
  one residual block per resolution r = S, S/2, ..., 8 (each halves the size):
      main: 3×3 conv ch(r) → ch(r), act; blur, 3×3 stride-2 conv → ch(r/2), act
      skip: blur, 1×1 stride-2 conv → ch(r/2), no bias;   out = (main + skip) / √2
  minibatch standard deviation (one feature map appended, groups of up to 4 samples)
  3×3 conv ch(4) + 1 → ch(4), act; linear 16·ch(4) → ch(4), act; linear ch(4) → 1
  -> (B,) logits

ch(r) = min(max_channels, 2¹⁴·channel_multiplier / r): StyleGAN2's table (512 up to 32 pixels,
then halving per doubling; 128 channels at 256 pixels for channel_multiplier 2, the upstream
value). Equalised learning rate: every weight is stored N(0, 1) and multiplied by 1/√fan_in at
each forward, biases start at zero. "act" adds a bias, then leaky ReLU(0.2) × √2 (StyleGAN2's
fused_leaky_relu). Blur: the [1, 3, 3, 1] ⊗ [1, 3, 3, 1] / 64 filter, zero-padded (2, 2) before a
3×3 and (1, 1) before a 1×1 stride-2 conv so that each halves the size exactly.

No buffers: the blur filter is built at each forward, so DDP's buffer broadcast never writes into
a tensor that the real images' graph saved for the R1 penalty's double backward.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BLUR = (1.0, 3.0, 3.0, 1.0)
MBSTD_GROUP = 4  # samples per minibatch-stddev group (StyleGAN2's)


def stylegan2_channels(resolution: int, channel_multiplier: int = 2, max_channels: int = 512) -> int:
    """ch(r) = min(max_channels, 2¹⁴·channel_multiplier / r), at least 1."""
    return max(1, min(max_channels, (1 << 14) * channel_multiplier // resolution))


def mbstd_group(batch: int, group: int = MBSTD_GROUP) -> int:
    """Samples per minibatch-stddev group: b // (b // min(b, 4)) as enhancing-transformers (4 when
    4 divides the batch, the whole batch below 8); where that does not divide b (upstream then
    fails: b = 9, 11, 13, 14, ...), the largest divisor of b that is at most 4."""
    g = batch // (batch // min(batch, group))
    if batch % g:
        g = max(d for d in range(1, min(batch, group) + 1) if batch % d == 0)
    return g


def minibatch_stddev(h: Tensor, group: int = MBSTD_GROUP) -> Tensor:
    """h (B, C, H, W) with one more channel: the standard deviation over its group of each
    feature, averaged over C, H, W; sample n belongs to group n mod (B / G), as upstream."""
    b, c, hh, ww = h.shape
    g = mbstd_group(b, group)
    y = h.to(torch.promote_types(h.dtype, torch.float32))  # at least fp32 under autocast
    y = y.reshape(g, b // g, c, hh, ww)  # (G, B/G, C, H, W): groups are strided
    y = (y.var(0, unbiased=False) + 1e-8).sqrt().mean((1, 2, 3))  # (B/G,)
    y = y.reshape(1, b // g, 1, 1, 1).expand(g, -1, 1, hh, ww).reshape(b, 1, hh, ww)
    return torch.cat([h, y.to(h.dtype)], 1)


class _Act(nn.Module):
    """Bias, leaky ReLU(0.2), × √2 (fused_leaky_relu)."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return F.leaky_relu(x + self.bias.view(shape), 0.2) * math.sqrt(2)


class _Conv(nn.Module):
    """Equalised-lr k×k convolution: stride 1 with 'same' padding, or blur then stride 2."""

    def __init__(self, c_in: int, c_out: int, k: int, down: bool = False, bias: bool = True, act: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, k, k))
        self.scale = 1.0 / math.sqrt(c_in * k * k)
        self.down, self.k = down, k
        self.act = _Act(c_out) if act else None
        # the bias lives in the activation when there is one (upstream: bias and not activate)
        self.bias = nn.Parameter(torch.zeros(c_out)) if bias and not act else None

    def forward(self, x: Tensor) -> Tensor:
        if self.down:
            x = blur(x, pad=len(BLUR) - 2 + self.k - 1)
        x = F.conv2d(x, self.weight * self.scale, self.bias, stride=2 if self.down else 1,
                     padding=0 if self.down else self.k // 2)
        return x if self.act is None else self.act(x)


def blur(x: Tensor, pad: int) -> Tensor:
    """Depthwise [1, 3, 3, 1]² / 64 filter after zero padding (⌈pad/2⌉, ⌊pad/2⌋) on each axis
    (upfirdn2d with up = down = 1; the filter is symmetric, so its flip is itself)."""
    k = torch.tensor(BLUR, dtype=x.dtype, device=x.device)
    k = torch.outer(k, k) / k.sum() ** 2  # (4, 4), sums to 1
    c = x.shape[1]
    p0, p1 = (pad + 1) // 2, pad // 2
    x = F.pad(x, (p0, p1, p0, p1))
    return F.conv2d(x, k.expand(c, 1, -1, -1), groups=c)


class _Linear(nn.Module):
    """Equalised-lr linear layer, optionally followed by the activation."""

    def __init__(self, d_in: int, d_out: int, act: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d_out, d_in))
        self.scale = 1.0 / math.sqrt(d_in)
        self.act = _Act(d_out) if act else None
        self.bias = None if act else nn.Parameter(torch.zeros(d_out))

    def forward(self, x: Tensor) -> Tensor:
        x = F.linear(x, self.weight * self.scale, self.bias)
        return x if self.act is None else self.act(x)


class ResBlock(nn.Module):
    """(B, c_in, r, r) -> (B, c_out, r/2, r/2): (main + skip) / √2."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = _Conv(c_in, c_in, 3)
        self.conv2 = _Conv(c_in, c_out, 3, down=True)
        self.skip = _Conv(c_in, c_out, 1, down=True, bias=False, act=False)

    def forward(self, x: Tensor) -> Tensor:
        return (self.conv2(self.conv1(x)) + self.skip(x)) / math.sqrt(2)


class StyleGAN2Discriminator(nn.Module):
    def __init__(self, size: int, in_channels: int = 3, channel_multiplier: int = 2, max_channels: int = 512):
        super().__init__()
        if size < 8 or size & (size - 1):
            raise ValueError(f"the StyleGAN2 discriminator judges square images whose side is a power of two ≥ 8 "
                             f"(its blocks halve them down to 4×4), got {size}")
        if in_channels < 1 or channel_multiplier < 1 or max_channels < 1:
            raise ValueError(f"need in_channels, channel_multiplier and max_channels ≥ 1, got {in_channels}, "
                             f"{channel_multiplier}, {max_channels}")
        self.size = size

        def ch(r: int) -> int:
            return stylegan2_channels(r, channel_multiplier, max_channels)

        blocks: list[nn.Module] = [_Conv(in_channels, ch(size), 1)]
        r = size
        while r > 4:
            blocks.append(ResBlock(ch(r), ch(r // 2)))
            r //= 2
        self.blocks = nn.Sequential(*blocks)
        self.final_conv = _Conv(ch(4) + 1, ch(4), 3)
        self.final_linear = nn.Sequential(_Linear(ch(4) * 16, ch(4), act=True), _Linear(ch(4), 1, act=False))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[-2:] != (self.size, self.size):
            raise ValueError(f"this StyleGAN2 discriminator was built for (B, C, {self.size}, {self.size}) images, "
                             f"got {tuple(x.shape)}")
        h = minibatch_stddev(self.blocks(x))  # (B, ch(4) + 1, 4, 4)
        h = self.final_conv(h).flatten(1)  # (B, 16·ch(4)), in (C, H, W) order
        return self.final_linear(h).squeeze(1)  # (B,)
