"""TimeSformer encoder and decoder for video tokenizers (the paper's A.1 / Table 11 setting:
"TimeSformer-VQGAN"), with divided space-time attention (Bertasius et al. 2021, §3 "Divided
Space-Time Attention").

Encoder: clips (B, C, T, H, W) -> each frame cut into p×p patches, linearly embedded (a stride-p
conv, shared by all frames) -> + embeddings of the patch's position and of the frame index (fixed
sin-cos, or learned under the huggingface flavour below) -> ``depth`` divided space-time blocks ->
LayerNorm -> (B, z_channels, T, H/p, W/p).
Decoder: the mirror, ending in a per-token linear map back to the token's p×p pixels in its frame
(``conv_out``). :func:`build_timesformer_tokenizer` puts them around a :class:`VectorQuantizer`
in a :class:`VQTokenizer` (1×1×1 ``quant_conv`` / ``post_quant_conv``); tokens are (T, H/p, W/p).

A divided block, on tokens (B, T, N, D) with N = (H/p)(W/p) patches per frame:

    x ← x + W_t · TemporalAttn(LN(x))     attention over the T frames at each patch position
    x ← x + SpatialAttn(LN(x))            attention over the N patches of each frame
    x ← x + MLP(LN(x))

as in TimeSformer and in Hugging Face's ``TimesformerLayer`` (divided_space_time), which the
paper used. Two flavours (``flavour=``, the recipe's ``model.timesformer.flavour``):

- ``"rvq"`` (the default): no class token (a tokenizer has no classification head); fixed
  sin-cos position and time embeddings (as rvq's ViT-VQGAN), computed for the built clip size (a
  non-persistent buffer); q, k, v without bias; LayerNorm ε 1e-5; the init of rvq's ViT
  (:data:`~rvq_cli.models.vit.WEIGHT_INITS`, default ``trunc_normal``).
- ``"huggingface"``: what transformers' ``TimesformerEmbeddings`` + ``TimesformerLayer`` compute
  (``tests/models/test_timesformer.py`` checks outputs and gradients against them). A learned
  ``position_embeddings`` (1 + N, one per patch and one for the class token) is added to every
  frame's patches, then a learned ``time_embeddings`` (one per frame) to the patches only; one
  learned ``cls_token`` is prepended. In each block the temporal attention runs on the patch
  tokens only; the spatial attention runs per frame with the class token repeated into each
  frame, and the T class outputs are averaged back to one; the MLP sees all tokens. q, k, v with
  bias, LayerNorm ε 1e-6 (also the final one). Init as transformers' ``_init_weights`` unless
  ``init`` names one: Linear and conv weights ``trunc_normal_(std=0.02)`` at its default bounds
  ±2 (100σ, so in effect N(0, 0.02²)), biases 0, LayerNorm 1 / 0, ``cls_token`` and
  ``position_embeddings`` the same trunc normal, ``time_embeddings`` zeros. The class token is
  dropped after the last block: the features are the patch tokens. The decoder mirrors it with a
  class token and embeddings of its own. Unlike transformers, embeddings are never interpolated:
  another clip size is an error, as in the rvq flavour.

In both, ``W_t`` (``temporal_fc``, transformers' ``temporal_dense``) is initialised like every
other linear layer (the original TimeSformer zeroes it in all blocks but the first; transformers
does not). Why our own module rather than ``transformers.TimesformerModel``: that model is an
encoder for classification with no decoder to mirror it, and it would add the transformers
package for ~100 lines of blocks that reuse rvq's ViT attention (SDPA) and init.

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
from .vit import (
    ACTIVATIONS,
    Attention,
    check_init,
    check_transformer_args,
    init_weights,
    mirrored_tokenizer,
    patch_grid,
    sincos_2d,
)

__all__ = ["FLAVOURS", "DividedBlock", "HFDividedBlock", "TimeSformerDecoder", "TimeSformerEncoder",
           "build_timesformer_tokenizer", "sincos_1d"]

FLAVOURS = ("rvq", "huggingface")  # model.timesformer.flavour
_EPS = {"rvq": 1e-5, "huggingface": 1e-6}  # LayerNorm ε: PyTorch's default; TimesformerConfig.layer_norm_eps


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

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float = 0.0, activation: str = "gelu", *,
                 qkv_bias: bool = False, eps: float = 1e-5) -> None:
        super().__init__()
        self.norm_t = nn.LayerNorm(dim, eps=eps)
        self.temporal_attn = Attention(dim, heads, dropout, qkv_bias)
        self.temporal_fc = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads, dropout, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
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


class HFDividedBlock(DividedBlock):
    """transformers' ``TimesformerLayer`` (divided_space_time): the divided block with a class
    token, on patch tokens (B, T, N, D) and the class token (B, 1, D); q, k, v with bias, ε 1e-6.

        x ← x + W_t · drop(TemporalAttn(LN(x)))               patches only, over the T frames
        [c_t; x_t] ← drop(SpatialAttn(LN([c; x_t])))  per frame t, c repeated into every frame
        x ← x + x_t,  c ← c + mean_t c_t
        [c; x] ← [c; x] + drop(MLP(LN([c; x])))
    """

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float = 0.0, activation: str = "gelu") -> None:
        super().__init__(dim, heads, mlp_dim, dropout, activation, qkv_bias=True, eps=_EPS["huggingface"])

    def forward(self, x: Tensor, cls: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        b, t, n, d = x.shape
        xt = x.transpose(1, 2).reshape(b * n, t, d)  # (B, T, N, D) -> (B·N, T, D): one sequence per position
        xt = xt + self.temporal_fc(self.drop(self.temporal_attn(self.norm_t(xt))))
        xs = xt.reshape(b, n, t, d).transpose(1, 2).reshape(b * t, n, d)  # -> (B·T, N, D): one per frame
        s = torch.cat([cls.repeat_interleave(t, dim=0), xs], dim=1)  # (B·T, 1 + N, D), row b·T + t
        s = self.drop(self.attn(self.norm1(s)))
        cls = cls + s[:, :1].reshape(b, t, d).mean(1, keepdim=True)  # (B, 1, D): the frames' outputs averaged
        xs = xs + s[:, 1:]
        xs = xs + self.drop(self.mlp(self.norm2(xs)))
        cls = cls + self.drop(self.mlp(self.norm2(cls)))
        return xs.reshape(b, t, n, d), cls


def _clip(frames: int, image_size: int | Sequence[int], patch_size: int):
    if int(frames) != frames or frames < 1:
        raise ValueError(f"frames must be a positive integer, got {frames!r}")
    hw, grid = patch_grid(image_size, patch_size)
    return int(frames), hw, grid


def _position(dim: int, frames: int, grid: tuple[int, int]) -> Tensor:
    """(T, N, D): the patch's 2-D sin-cos embedding plus the frame's 1-D one."""
    return sincos_2d(dim, *grid)[None] + sincos_1d(dim, frames)[:, None]


def _clip_error(name: str, frames: int, hw: tuple[int, int], patch: int, got: str) -> ValueError:
    return ValueError(f"{name} was built for clips of {frames} frames of {hw[0]}×{hw[1]} ({patch}-pixel patches, "
                      f"one position embedding each); got {got}. Build it for the clip size you want to run.")


def _check_flavour(flavour: str, init: str | None) -> None:
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown flavour {flavour!r}; valid: {', '.join(FLAVOURS)}")
    if init is not None:
        check_init(init)


def _hf_init(m: nn.Module) -> None:
    """transformers' Timesformer ``_init_weights`` on one layer: Linear / conv weights
    ``trunc_normal_(std=0.02)`` at its default bounds ±2 (100σ), biases 0; LayerNorm 1 / 0. (It has
    no transposed conv; its base class draws those N(0, 0.02²), the same in effect.)"""
    if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class _Transformer(nn.Module):
    """What the encoder and the decoder share: a flavour's embeddings, blocks and last LayerNorm
    (the module docstring describes both flavours)."""

    frames: int
    grid: tuple[int, int]

    def _build(self, flavour: str, dim: int, depth: int, heads: int, mlp_dim: int, dropout: float,
               activation: str) -> None:
        self.flavour = flavour
        if flavour == "rvq":
            self.register_buffer("pos_embed", _position(dim, self.frames, self.grid), persistent=False)  # (T, N, D)
            block = DividedBlock
        else:  # transformers' TimesformerEmbeddings, with its shapes
            n = self.grid[0] * self.grid[1]
            self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
            self.position_embeddings = nn.Parameter(torch.zeros(1, 1 + n, dim))  # [class token, patches row-major]
            self.time_embeddings = nn.Parameter(torch.zeros(1, self.frames, dim))
            self.embed_drop = nn.Dropout(dropout)
            block = HFDividedBlock
        self.blocks = nn.ModuleList(block(dim, heads, mlp_dim, dropout, activation) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=_EPS[flavour])

    def _init(self, init: str | None) -> None:
        if init is not None or self.flavour == "rvq":
            init_weights(self, init or "trunc_normal")
        else:
            self.apply(_hf_init)
        if self.flavour == "huggingface":  # transformers' _init_weights; time_embeddings stay zero there
            nn.init.trunc_normal_(self.cls_token, std=0.02)
            nn.init.trunc_normal_(self.position_embeddings, std=0.02)

    def _transform(self, h: Tensor) -> Tensor:
        """Tokens (B, T, N, D) -> embeddings, blocks, LayerNorm -> (B, T, N, D) (without the class token)."""
        if self.flavour == "rvq":
            h = h + self.pos_embed
            for block in self.blocks:
                h = block(h)
            return self.norm(h)
        pos = self.position_embeddings[0]  # (1 + N, D)
        h = self.embed_drop(self.embed_drop(h + pos[1:]) + self.time_embeddings[0, :, None])  # (B, T, N, D)
        cls = self.embed_drop((self.cls_token[0] + pos[:1]).expand(h.shape[0], 1, -1))  # (B, 1, D)
        for block in self.blocks:
            h, cls = block(h, cls)
        return self.norm(h)


class TimeSformerEncoder(_Transformer):
    """Clips (B, in_channels, T, H, W) -> features (B, z_channels, T, H/p, W/p).

    ``flavour`` is one of :data:`FLAVOURS`; ``init`` one of rvq's ViT inits, or None for the
    flavour's own (rvq: ``trunc_normal``; huggingface: transformers')."""

    spatial_dims = 3

    def __init__(self, frames: int, image_size: int | Sequence[int], patch_size: int, in_channels: int, dim: int,
                 depth: int, heads: int, mlp_dim: int, z_channels: int, dropout: float = 0.0, *,
                 activation: str = "gelu", flavour: str = "rvq", init: str | None = None) -> None:
        super().__init__()
        check_transformer_args(("in_channels", in_channels), dim, depth, heads, mlp_dim, z_channels, dropout,
                               activation)
        _check_flavour(flavour, init)
        self.frames, self.image_size, self.grid = _clip(frames, image_size, patch_size)
        self.in_channels, self.z_channels, self.dim = in_channels, z_channels, dim
        self.downsample_factor = patch_size
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self._build(flavour, dim, depth, heads, mlp_dim, dropout, activation)
        self.proj_out = nn.Linear(dim, z_channels) if z_channels != dim else nn.Identity()
        self._init(init)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected clips (B, {self.in_channels}, T, H, W), got shape {tuple(x.shape)}")
        b, c, t, hgt, wid = x.shape
        if (t, hgt, wid) != (self.frames, *self.image_size):
            raise _clip_error("TimeSformerEncoder", self.frames, self.image_size, self.downsample_factor,
                              f"{t} frames of {hgt}×{wid}")
        frames = x.transpose(1, 2).reshape(b * t, c, hgt, wid)  # (B, C, T, H, W) -> (B·T, C, H, W)
        h = self.patch_embed(frames).flatten(2).transpose(1, 2)  # (B·T, N, D)
        h = self._transform(h.reshape(b, t, -1, self.dim))  # (B, T, N, D)
        z = self.proj_out(h)  # (B, T, N, z)
        gh, gw = self.grid
        return z.permute(0, 3, 1, 2).reshape(b, self.z_channels, t, gh, gw)


class TimeSformerDecoder(_Transformer):
    """Features (B, z_channels, T, H/p, W/p) -> clips (B, out_channels, T, H, W), the encoder
    mirrored (with a class token and embeddings of its own under the huggingface flavour);
    ``conv_out`` (stride-p transposed conv, shared by all frames) is the last layer."""

    spatial_dims = 3

    def __init__(self, frames: int, image_size: int | Sequence[int], patch_size: int, out_channels: int, dim: int,
                 depth: int, heads: int, mlp_dim: int, z_channels: int, dropout: float = 0.0, *,
                 activation: str = "gelu", flavour: str = "rvq", init: str | None = None) -> None:
        super().__init__()
        check_transformer_args(("out_channels", out_channels), dim, depth, heads, mlp_dim, z_channels, dropout,
                               activation)
        _check_flavour(flavour, init)
        self.frames, self.image_size, self.grid = _clip(frames, image_size, patch_size)
        self.out_channels, self.z_channels, self.dim = out_channels, z_channels, dim
        self.downsample_factor = patch_size
        self.proj_in = nn.Linear(z_channels, dim) if z_channels != dim else nn.Identity()
        self._build(flavour, dim, depth, heads, mlp_dim, dropout, activation)
        self.conv_out = nn.ConvTranspose2d(dim, out_channels, patch_size, stride=patch_size)
        self._init(init)

    def forward(self, z: Tensor) -> Tensor:
        if z.dim() != 5 or z.shape[1] != self.z_channels:
            raise ValueError(f"expected features (B, {self.z_channels}, T, h, w), got shape {tuple(z.shape)}")
        b, _, t, gh, gw = z.shape
        if (t, gh, gw) != (self.frames, *self.grid):
            raise _clip_error("TimeSformerDecoder", self.frames, self.image_size, self.downsample_factor,
                              f"a {t}×{gh}×{gw} feature grid")
        h = self._transform(self.proj_in(z.permute(0, 2, 3, 4, 1).reshape(b, t, gh * gw, self.z_channels)))
        h = h.reshape(b * t, gh, gw, self.dim).permute(0, 3, 1, 2)  # (B, T, N, D) -> (B·T, D, h, w)
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
    flavour: str = "rvq",
    init: str | None = None,
) -> VQTokenizer:
    """A video :class:`VQTokenizer`: :class:`TimeSformerEncoder` / :class:`TimeSformerDecoder`
    around a quantizer (a built :class:`VectorQuantizer` with ``dim == embed_dim``, or its
    keyword arguments). Tokens of a clip: (frames, H/p, W/p). ``flavour``: one of
    :data:`FLAVOURS`; ``init``: one of rvq's ViT inits, or None for the flavour's own."""
    common = {"frames": frames, "image_size": image_size, "patch_size": patch_size, "dim": dim, "depth": depth,
              "heads": heads, "mlp_dim": mlp_dim, "z_channels": z_channels, "dropout": dropout,
              "activation": activation, "flavour": flavour, "init": init}
    return mirrored_tokenizer(TimeSformerEncoder, TimeSformerDecoder, common, quantizer, embed_dim, in_channels,
                              out_channels, projection)
