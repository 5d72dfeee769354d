"""Convolutional encoder and decoder of Esser et al. (2021, "Taming Transformers", §3.1), with the
layout of taming-transformers / latent-diffusion: ResNet blocks at every level, single-head
self-attention where the feature map's size is in ``attn_resolutions``, a ResNet–attention–ResNet
middle block, and 2× resampling between levels (down-sampling factor f = 2^(len(ch_mult) − 1)).

Submodule names follow those models (``conv_in``, ``down.{i}.block.{j}``, ``mid.attn_1``,
``up.{i}.upsample.conv``, ``norm_out``, ...), so their encoder/decoder weights load as they are.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import attention
from .groupnorm import norm_silu

__all__ = ["Encoder", "Decoder", "ResnetBlock", "AttnBlock", "Downsample", "Upsample", "level_resolutions"]


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """(GroupNorm → SiLU → conv3×3) twice, dropout before the second conv, plus a shortcut
    (1×1 conv, or 3×3 with ``conv_shortcut``) when the channel count changes."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0, norm_groups: int = 32,
                 conv_shortcut: bool = False) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = _norm(in_channels, norm_groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels, norm_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            if conv_shortcut:
                self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 3, padding=1)
            else:
                self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def shortcut(self, x: Tensor) -> Tensor:
        if hasattr(self, "conv_shortcut"):
            return self.conv_shortcut(x)
        if hasattr(self, "nin_shortcut"):
            return self.nin_shortcut(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(norm_silu(self.norm1, x))
        h = self.conv2(self.dropout(norm_silu(self.norm2, h)))
        return self.shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over spatial positions with a residual connection:
    x + proj_out(v · softmax(qᵀk / √C)ᵀ), q, k, v 1×1 convs of GroupNorm(x)."""

    def __init__(self, channels: int, norm_groups: int = 32) -> None:
        super().__init__()
        self.norm = _norm(channels, norm_groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, hgt, wid = x.shape
        h = norm_silu(self.norm, x, silu=False)
        # (B, C, H, W) -> (B, HW, C): one token per position; the scale is 1/√C
        q, k, v = (t.reshape(b, c, hgt * wid).transpose(1, 2) for t in (self.q(h), self.k(h), self.v(h)))
        h = attention(q, k, v)  # (B, HW, C)
        h = h.transpose(1, 2).reshape(b, c, hgt, wid)  # (B, HW, C) -> (B, C, H, W)
        return x + self.proj_out(h)


class Downsample(nn.Module):
    """Stride-2 3×3 conv after zero-padding right and bottom by one (taming's asymmetric padding):
    (H, W) -> (⌊H/2⌋, ⌊W/2⌋)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


def _fold_taps(w: Tensor, dim: int) -> Tensor:
    """Along ``dim``, the 3 taps (w0, w1, w2) of a conv that follows a nearest 2× up-sampling, as
    the 4 taps (w2, w1 + w2, w0 + w1, w0) of a stride-2 transposed conv on the input itself: an
    output at 2i reads the up-sampled rows 2i − 1, 2i, 2i + 1, i.e. input rows i − 1, i, i (w0 on
    i − 1, w1 + w2 on i); an output at 2i + 1 reads input rows i, i, i + 1 (w0 + w1 on i, w2 on
    i + 1)."""
    w0, w1, w2 = w.unbind(dim)
    return torch.stack((w2, w1 + w2, w0 + w1, w0), dim)


class Upsample(nn.Module):
    """Nearest-neighbour 2× up-sampling, then a 3×3 conv: (H, W) -> (2H, 2W).

    Computed as one stride-2 transposed conv whose 4×4 kernel is folded from the 3×3 one (the
    same function, summed in another order): 4 taps per output instead of 9 and no up-sampled
    copy, about half the time of up-sampling and convolving. The parameters are the 3×3 conv's
    (``conv.weight``, ``conv.bias``), so taming's weights load as they are; ``conv`` itself is
    never called, so hooks registered on it do not run."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        w = self.conv.weight  # folded in fp32 at least, then rounded once (to bf16 by autocast, at the conv)
        folded = _fold_taps(_fold_taps(w.to(torch.promote_types(w.dtype, torch.float32)), 2), 3).to(w.dtype)
        w = folded.transpose(0, 1)  # (C_out, C_in, 3, 3) -> (C_in, C_out, 4, 4)
        return F.conv_transpose2d(x, w, self.conv.bias, stride=2, padding=1)


def level_resolutions(resolution: int, num_levels: int) -> list[int]:
    """Feature-map size at each level for a ``resolution``-pixel input: resolution / 2^level."""
    return [resolution // 2**i for i in range(num_levels)]


def _check_args(in_channels: int, ch: int, ch_mult: Sequence[int], num_res_blocks: int,
                attn_resolutions: Sequence[int], resolution: int, z_channels: int, dropout: float,
                norm_groups: int) -> None:
    """Raise ValueError naming the bad value; shared by Encoder and Decoder."""
    if len(ch_mult) == 0 or any(int(m) != m or m < 1 for m in ch_mult):
        raise ValueError(f"ch_mult must be a non-empty sequence of positive integers, got {tuple(ch_mult)}")
    for name, value in (("in_channels", in_channels), ("ch", ch), ("num_res_blocks", num_res_blocks),
                        ("resolution", resolution), ("z_channels", z_channels), ("norm_groups", norm_groups)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    f = 2 ** (len(ch_mult) - 1)
    if resolution % f:
        raise ValueError(f"resolution {resolution} is not divisible by the down-sampling factor f = {f} "
                         f"(2^(len(ch_mult) - 1) with ch_mult={tuple(ch_mult)})")
    bad = sorted({c for c in (ch, *(ch * m for m in ch_mult)) if c % norm_groups})
    if bad:
        raise ValueError(f"GroupNorm with norm_groups={norm_groups} needs channel counts divisible by it; "
                         f"ch={ch} and ch_mult={tuple(ch_mult)} give {bad}")
    sizes = level_resolutions(resolution, len(ch_mult))
    unused = [r for r in attn_resolutions if r not in sizes]
    if unused:
        raise ValueError(f"attn_resolutions {unused} match no level; with resolution={resolution} and "
                         f"{len(ch_mult)} levels the feature-map sizes are {sizes}")


class _Level(nn.Module):
    """One resolution level: ResNet blocks, their attention blocks, and the resampler (or none)."""

    def __init__(self, blocks: list[ResnetBlock], attns: list[AttnBlock]) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attns)  # empty, or one per block

    def forward(self, h: Tensor) -> Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn):
                h = self.attn[i](h)
        return h


class _Mid(nn.Module):
    """ResnetBlock → AttnBlock → ResnetBlock at the lowest resolution."""

    def __init__(self, channels: int, dropout: float, norm_groups: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout, norm_groups)
        self.attn_1 = AttnBlock(channels, norm_groups)
        self.block_2 = ResnetBlock(channels, channels, dropout, norm_groups)

    def forward(self, h: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    """Image (B, in_channels, H, W) -> features (B, z_channels, H/f, W/f), f = 2^(len(ch_mult) − 1).

    Level i has ``num_res_blocks`` ResNet blocks with ``ch * ch_mult[i]`` channels, each followed
    by an AttnBlock when the level's feature-map size (``resolution / 2^i``) is in
    ``attn_resolutions``; a Downsample follows every level but the last. Taming's f16 VQGAN:
    ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,), resolution=256.
    Inputs of other sizes run too (attention stays at the same levels).
    """

    def __init__(self, *, ch: int, ch_mult: Sequence[int], attn_resolutions: Sequence[int], resolution: int,
                 z_channels: int, in_channels: int = 3, num_res_blocks: int = 2, dropout: float = 0.0,
                 norm_groups: int = 32) -> None:
        super().__init__()
        _check_args(in_channels, ch, ch_mult, num_res_blocks, attn_resolutions, resolution, z_channels,
                    dropout, norm_groups)
        ch_mult = tuple(int(m) for m in ch_mult)
        self.in_channels, self.z_channels = in_channels, z_channels
        self.downsample_factor = 2 ** (len(ch_mult) - 1)
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        block_in = ch
        for i, size in enumerate(level_resolutions(resolution, len(ch_mult))):
            block_out = ch * ch_mult[i]
            blocks = [ResnetBlock(block_in if j == 0 else block_out, block_out, dropout, norm_groups)
                      for j in range(num_res_blocks)]
            attns = [AttnBlock(block_out, norm_groups) for _ in blocks] if size in attn_resolutions else []
            level = _Level(blocks, attns)
            if i < len(ch_mult) - 1:
                level.downsample = Downsample(block_out)
            self.down.append(level)
            block_in = block_out
        self.mid = _Mid(block_in, dropout, norm_groups)
        self.norm_out = _norm(block_in, norm_groups)
        self.conv_out = nn.Conv2d(block_in, z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(norm_silu(self.norm_out, h))


class Decoder(nn.Module):
    """Features (B, z_channels, h, w) -> image (B, out_channels, h·f, w·f): the Encoder mirrored.

    conv_in to ``ch * ch_mult[-1]`` channels, the middle block, then the levels from the lowest
    resolution up, each with ``num_res_blocks + 1`` ResNet blocks (plus attention where the
    level's size is in ``attn_resolutions``) and an Upsample between levels. ``up[i]`` is level i
    of the Encoder's numbering (``up[0]`` is the full-resolution level), as in taming.
    """

    def __init__(self, *, ch: int, ch_mult: Sequence[int], attn_resolutions: Sequence[int], resolution: int,
                 z_channels: int, out_channels: int = 3, num_res_blocks: int = 2, dropout: float = 0.0,
                 norm_groups: int = 32) -> None:
        super().__init__()
        _check_args(out_channels, ch, ch_mult, num_res_blocks, attn_resolutions, resolution, z_channels,
                    dropout, norm_groups)
        ch_mult = tuple(int(m) for m in ch_mult)
        self.out_channels, self.z_channels = out_channels, z_channels
        self.downsample_factor = 2 ** (len(ch_mult) - 1)
        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = _Mid(block_in, dropout, norm_groups)
        levels: list[_Level] = []
        sizes = level_resolutions(resolution, len(ch_mult))
        for i in reversed(range(len(ch_mult))):
            block_out = ch * ch_mult[i]
            blocks = [ResnetBlock(block_in if j == 0 else block_out, block_out, dropout, norm_groups)
                      for j in range(num_res_blocks + 1)]
            attns = [AttnBlock(block_out, norm_groups) for _ in blocks] if sizes[i] in attn_resolutions else []
            level = _Level(blocks, attns)
            if i > 0:
                level.upsample = Upsample(block_out)
            levels.insert(0, level)
            block_in = block_out
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(block_in, norm_groups)
        self.conv_out = nn.Conv2d(block_in, out_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(norm_silu(self.norm_out, h))
