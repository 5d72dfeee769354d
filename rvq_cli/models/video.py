"""TimeSformer encoder and decoder for video tokenizers (the paper's A.1 / Table 11 setting:
"TimeSformer-VQGAN"), with divided space-time attention (Bertasius et al. 2021, §3 "Divided
Space-Time Attention").

Encoder: clips (B, C, T, H, W) -> each frame cut into p×p patches, linearly embedded (a stride-p
conv, shared by all frames) -> + fixed sin-cos embeddings of the patch's row/column and of the
frame index -> ``depth`` divided space-time blocks -> LayerNorm -> (B, z_channels, T, H/p, W/p).
Decoder: the mirror, ending in a per-token linear map back to the token's p×p pixels in its frame
(``conv_out``). :func:`build_timesformer_tokenizer` puts them around a :class:`VectorQuantizer`
in a :class:`VQTokenizer` (1×1×1 ``quant_conv`` / ``post_quant_conv``); tokens are (T, H/p, W/p).

A divided block, on tokens (B, T, N, D) with N = (H/p)(W/p) patches per frame:

    x ← x + W_t · TemporalAttn(LN(x))     attention over the T frames at each patch position
    x ← x + SpatialAttn(LN(x))            attention over the N patches of each frame
    x ← x + MLP(LN(x))

as in TimeSformer and in Hugging Face's ``TimesformerLayer`` (divided_space_time), which the
paper used. Differences, all deliberate: no class token (a tokenizer has no classification
head); fixed sin-cos position and time embeddings (as rvq's ViT-VQGAN), computed for the built
clip size, instead of learned ones; ``W_t`` (the ``temporal_dense`` projection) initialised like
every other linear layer. Why our own module rather than ``transformers.TimesformerModel``: its
encoder embeds for classification (class token, learned embeddings interpolated at other sizes),
there is no decoder to mirror it, and it would add the transformers package for ~80 lines of
blocks that reuse rvq's ViT attention (SDPA) and init.

Table 11 as arguments (BAIR: 16×64×64 clips, patch 2 -> a 16×32×32 token grid; UCF101: 16×128×128,
patch 4 -> 16×32×32): ``dim=256, mlp_dim=768, depth=8, heads=4``, codes of dimension 32
(``embed_dim=32``, l2-normalised: ``lookup="cosine"``), 1024 (BAIR) or 2048 (UCF101) codes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..quantize import VectorQuantizer
from .tokenizer import VQTokenizer
from .vit import ACTIVATIONS, Attention, _check_args, _grid, _init_weights, mirrored_tokenizer, sincos_2d

__all__ = ["DividedBlock", "TimeSformerDecoder", "TimeSformerEncoder", "build_timesformer_tokenizer", "sincos_1d"]


def sincos_1d(dim: int, length: int) -> Tensor:
    """Fixed 1-D sine-cosine embedding of positions 0 .. length − 1, (length, dim)."""
    if dim % 2:
        raise ValueError(f"the sin-cos time embedding needs an even dim, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim // 2))
    angle = torch.arange(length, dtype=torch.float64)[:, None] * omega[None, :]
    return torch.cat([angle.sin(), angle.cos()], dim=1).float()


class DividedBlock(nn.Module):
    """Temporal attention, then spatial attention, then the MLP, each pre-LN and residual, on
    tokens (B, T, N, D)."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float = 0.0, activation: str = "gelu") -> None:
        super().__init__()
        self.norm_t = nn.LayerNorm(dim)
        self.temporal_attn = Attention(dim, heads, dropout)
        self.temporal_fc = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), ACTIVATIONS[activation](), nn.Dropout(dropout),
                                 nn.Linear(mlp_dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        b, t, n, d = x.shape
        xt = x.transpose(1, 2).reshape(b * n, t, d)  # (B, T, N, D) -> (B·N, T, D): one sequence per position
        xt = xt + self.drop(self.temporal_fc(self.temporal_attn(self.norm_t(xt))))
        xs = xt.reshape(b, n, t, d).transpose(1, 2).reshape(b * t, n, d)  # -> (B·T, N, D): one per frame
        xs = xs + self.drop(self.attn(self.norm1(xs)))
        xs = xs + self.drop(self.mlp(self.norm2(xs)))
        return xs.reshape(b, t, n, d)


def _clip(frames: int, image_size: int | Sequence[int], patch_size: int):
    if int(frames) != frames or frames < 1:
        raise ValueError(f"frames must be a positive integer, got {frames!r}")
    hw, grid = _grid(image_size, patch_size)
    return int(frames), hw, grid


def _position(dim: int, frames: int, grid: tuple[int, int]) -> Tensor:
    """(T, N, D): the patch's 2-D sin-cos embedding plus the frame's 1-D one."""
    return sincos_2d(dim, *grid)[None] + sincos_1d(dim, frames)[:, None]


def _clip_error(name: str, frames: int, hw: tuple[int, int], patch: int, got: str) -> ValueError:
    return ValueError(f"{name} was built for clips of {frames} frames of {hw[0]}×{hw[1]} ({patch}-pixel patches, "
                      f"one position embedding each); got {got}. Build it for the clip size you want to run.")


class TimeSformerEncoder(nn.Module):
    """Clips (B, in_channels, T, H, W) -> features (B, z_channels, T, H/p, W/p)."""

    spatial_dims = 3

    def __init__(self, frames: int, image_size: int | Sequence[int], patch_size: int, in_channels: int, dim: int,
                 depth: int, heads: int, mlp_dim: int, z_channels: int, dropout: float = 0.0, *,
                 activation: str = "gelu") -> None:
        super().__init__()
        _check_args(("in_channels", in_channels), dim, depth, heads, mlp_dim, z_channels, dropout, activation)
        self.frames, self.image_size, self.grid = _clip(frames, image_size, patch_size)
        self.in_channels, self.z_channels, self.dim = in_channels, z_channels, dim
        self.downsample_factor = patch_size
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.register_buffer("pos_embed", _position(dim, self.frames, self.grid), persistent=False)  # (T, N, D)
        self.blocks = nn.ModuleList(DividedBlock(dim, heads, mlp_dim, dropout, activation) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.proj_out = nn.Linear(dim, z_channels) if z_channels != dim else nn.Identity()
        self.apply(_init_weights)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected clips (B, {self.in_channels}, T, H, W), got shape {tuple(x.shape)}")
        b, c, t, hgt, wid = x.shape
        if (t, hgt, wid) != (self.frames, *self.image_size):
            raise _clip_error("TimeSformerEncoder", self.frames, self.image_size, self.downsample_factor,
                              f"{t} frames of {hgt}×{wid}")
        frames = x.transpose(1, 2).reshape(b * t, c, hgt, wid)  # (B, C, T, H, W) -> (B·T, C, H, W)
        h = self.patch_embed(frames).flatten(2).transpose(1, 2)  # (B·T, N, D)
        h = h.reshape(b, t, -1, self.dim) + self.pos_embed  # (B, T, N, D)
        for block in self.blocks:
            h = block(h)
        z = self.proj_out(self.norm(h))  # (B, T, N, z)
        gh, gw = self.grid
        return z.permute(0, 3, 1, 2).reshape(b, self.z_channels, t, gh, gw)


class TimeSformerDecoder(nn.Module):
    """Features (B, z_channels, T, H/p, W/p) -> clips (B, out_channels, T, H, W), the encoder
    mirrored; ``conv_out`` (stride-p transposed conv, shared by all frames) is the last layer."""

    spatial_dims = 3

    def __init__(self, frames: int, image_size: int | Sequence[int], patch_size: int, out_channels: int, dim: int,
                 depth: int, heads: int, mlp_dim: int, z_channels: int, dropout: float = 0.0, *,
                 activation: str = "gelu") -> None:
        super().__init__()
        _check_args(("out_channels", out_channels), dim, depth, heads, mlp_dim, z_channels, dropout, activation)
        self.frames, self.image_size, self.grid = _clip(frames, image_size, patch_size)
        self.out_channels, self.z_channels, self.dim = out_channels, z_channels, dim
        self.downsample_factor = patch_size
        self.proj_in = nn.Linear(z_channels, dim) if z_channels != dim else nn.Identity()
        self.register_buffer("pos_embed", _position(dim, self.frames, self.grid), persistent=False)
        self.blocks = nn.ModuleList(DividedBlock(dim, heads, mlp_dim, dropout, activation) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.conv_out = nn.ConvTranspose2d(dim, out_channels, patch_size, stride=patch_size)
        self.apply(_init_weights)

    def forward(self, z: Tensor) -> Tensor:
        if z.dim() != 5 or z.shape[1] != self.z_channels:
            raise ValueError(f"expected features (B, {self.z_channels}, T, h, w), got shape {tuple(z.shape)}")
        b, _, t, gh, gw = z.shape
        if (t, gh, gw) != (self.frames, *self.grid):
            raise _clip_error("TimeSformerDecoder", self.frames, self.image_size, self.downsample_factor,
                              f"a {t}×{gh}×{gw} feature grid")
        h = self.proj_in(z.permute(0, 2, 3, 4, 1).reshape(b, t, gh * gw, self.z_channels)) + self.pos_embed
        for block in self.blocks:
            h = block(h)
        h = self.norm(h).reshape(b * t, gh, gw, self.dim).permute(0, 3, 1, 2)  # (B·T, D, h, w)
        frames = self.conv_out(h)  # (B·T, C, H, W)
        return frames.reshape(b, t, self.out_channels, *frames.shape[2:]).transpose(1, 2)  # (B, C, T, H, W)


def build_timesformer_tokenizer(
    *,
    frames: int,
    image_size: int | Sequence[int],
    patch_size: int,
    dim: int,
    depth: int,
    heads: int,
    mlp_dim: int,
    z_channels: int,
    embed_dim: int,
    quantizer: VectorQuantizer | Mapping[str, Any],
    in_channels: int = 3,
    out_channels: int | None = None,
    dropout: float = 0.0,
    activation: str = "gelu",
    projection: str = "conv",
) -> VQTokenizer:
    """A video :class:`VQTokenizer`: :class:`TimeSformerEncoder` / :class:`TimeSformerDecoder`
    around a quantizer (a built :class:`VectorQuantizer` with ``dim == embed_dim``, or its
    keyword arguments). Tokens of a clip: (frames, H/p, W/p)."""
    common = {"frames": frames, "image_size": image_size, "patch_size": patch_size, "dim": dim, "depth": depth,
              "heads": heads, "mlp_dim": mlp_dim, "z_channels": z_channels, "dropout": dropout,
              "activation": activation}
    return mirrored_tokenizer(TimeSformerEncoder, TimeSformerDecoder, common, quantizer, embed_dim, in_channels,
                              out_channels, projection)
