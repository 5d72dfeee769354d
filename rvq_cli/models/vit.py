"""ViT encoder and decoder of ViT-VQGAN (Yu et al. 2022, "Vector-quantized Image Modeling with
Improved VQGAN", §3), laid out as in the implementation the rotation-trick paper trained for §5.3 /
Table 4 (github.com/thuanz123/enhancing-transformers, ``enhancing/modules/stage1/layers.py``).

Encoder: p×p patches -> linear patch embedding (a stride-p conv) + fixed 2-D sine-cosine position
embedding -> ``depth`` pre-LN transformer blocks -> LayerNorm -> (B, z_channels, H/p, W/p).
Decoder: the mirror, ending in a per-token linear map to the token's p×p pixels (``conv_out``, a
stride-p transposed conv). :func:`build_vit_tokenizer` puts them around a :class:`VectorQuantizer`
in a :class:`VQTokenizer`, whose 1×1 ``quant_conv`` / ``post_quant_conv`` are the repository's
``pre_quant`` / ``post_quant`` linear layers.

Choices (each as in enhancing-transformers unless said otherwise):

- position embedding: fixed 2-D sin-cos (MAE-style), not learned; it is computed from the
  arguments (a non-persistent buffer, absent from the state dict) for the ``image_size`` grid, and
  any other input size is a ValueError, never a silent interpolation or extrapolation.
- MLP activation: tanh (``activation="gelu"`` gives the ViT/BERT one).
- attention: q, k, v from one bias-free linear layer, head dim = dim / heads (64 in Table 10),
  :func:`torch.nn.functional.scaled_dot_product_attention` (on the CPU in bf16, for up to 384
  tokens, the same function as two matmuls and a softmax, which run faster there: :mod:`.attention`).
- init, ``init=`` one of :data:`WEIGHT_INITS` (the recipe's ``model.vit.init``):
  ``"trunc_normal"`` (the default, rvq's own): the σ = 0.02 of timm's ViT and BERT, truncated
  here at ±2σ, for every linear layer and also for the patch embedding and ``conv_out``; biases 0.
  ``"xavier"`` (enhancing-transformers' ``init_weights``, which the Table 4 code applies to its
  encoder and decoder): xavier-uniform linear weights, biases 0; the two convs' weights
  xavier-uniform as the 2-D matrix (shape[0], rest), so the bound is √(6 / (dim + C·p²)) for both;
  their biases keep PyTorch's default. LayerNorm weight 1, bias 0 under either.
- ``z_channels == dim`` (recommended) emits the final LayerNorm's tokens as they are; otherwise a
  linear map dim -> z_channels (encoder) and z_channels -> dim (decoder) is added.

Table 10 (ViT-VQGAN small, ImageNet) as :func:`build_vit_tokenizer` arguments::

    Input size 256×256×3               image_size=256, in_channels=3
    Patch size 8                       patch_size=8        (a 32×32 grid: 1024 tokens per image)
    Encoder / Decoder hidden dim 512   dim=512, z_channels=512
    Encoder / Decoder MLP dim 1024     mlp_dim=1024        (the repository's
                                                            configs/imagenet_vitvq_small.yaml has 2048)
    Encoder / Decoder depth 8          depth=8
    Encoder / Decoder heads 8          heads=8             (head dim 64)
    Codebook 8192 × 32, l2-normalised  embed_dim=32,
    and factorised                     quantizer={"codebook_size": 8192, "lookup": "cosine"}

Factorised codes: quant_conv (512 -> 32) is the low-dimensional projection, the cosine lookup
l2-normalises e and the codes, post_quant_conv (32 -> 512) projects back. (``embed_dim=512,
codebook_dim=32`` puts the factorisation inside the quantizer instead, at the cost of one extra
512×512 map.) The repository's quantizer learns its codebook with the codebook loss (Table 10:
coefficient 1.0) and β = 0.25: ``update="learned", beta=0.25``. Table 4 writes the latent shape
as 8×8×32; with 8-pixel patches a 256-pixel image gives a 32×32 grid of 32-dim codes.
Encoder and decoder have ≈16.9M parameters each with mlp_dim=1024 (≈25.3M with 2048); see
``tests/models/test_vit.py::test_table10_parameter_count``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..quantize import VectorQuantizer
from .attention import attention
from .tokenizer import VQTokenizer, as_quantizer

__all__ = ["ACTIVATIONS", "WEIGHT_INITS", "Attention", "Block", "ViTDecoder", "ViTEncoder", "build_vit_tokenizer",
           "init_weights", "sincos_2d"]

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"tanh": nn.Tanh, "gelu": nn.GELU}


def sincos_2d(dim: int, h: int, w: int) -> Tensor:
    """Fixed 2-D sine-cosine position embedding, (h·w, dim) in row-major (h, w) order (MAE).

    The first dim/2 channels encode the row i, the last dim/2 the column j, each as
    [sin(pos·ω_k), cos(pos·ω_k)] with ω_k = 10000^(−k / (dim/4)), k = 0 .. dim/4 − 1.
    """
    if dim % 4:
        raise ValueError(f"the 2-D sin-cos position embedding needs dim divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))  # (dim/4,)

    def embed(pos: Tensor) -> Tensor:  # (M,) -> (M, dim/2)
        angle = pos[:, None] * omega[None, :]  # (M, dim/4)
        return torch.cat([angle.sin(), angle.cos()], dim=1)

    i, j = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                          indexing="ij")  # (h, w) each
    return torch.cat([embed(i.reshape(-1)), embed(j.reshape(-1))], dim=1).float()  # (h·w, dim)


def _trunc_normal_init(m: nn.Module) -> None:
    """Weights ~ N(0, 0.02²) truncated at ±2σ (timm's ViT / BERT σ), biases 0; LayerNorm 1 / 0."""
    if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.trunc_normal_(m.weight, std=0.02, a=-0.04, b=0.04)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def _xavier_init(m: nn.Module) -> None:
    """enhancing-transformers' ``init_weights`` (Table 4): Linear weights xavier-uniform, biases 0;
    conv weights xavier-uniform as the matrix (shape[0], rest), conv biases as PyTorch drew them;
    LayerNorm 1 / 0."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)  # U(±√(6 / (fan_in + fan_out)))
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        with torch.no_grad():  # (A, B, k, k) -> (A, B·k·k): fan_out = A, fan_in = B·k·k
            nn.init.xavier_uniform_(m.weight.view(m.weight.shape[0], -1))
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


_INITS: dict[str, Callable[[nn.Module], None]] = {"trunc_normal": _trunc_normal_init, "xavier": _xavier_init}
WEIGHT_INITS = tuple(_INITS)  # model.vit.init, model.timesformer.init


def init_weights(module: nn.Module, init: str = "trunc_normal") -> None:
    """Initialise every Linear, Conv2d / ConvTranspose2d and LayerNorm inside ``module`` by ``init``
    (one of :data:`WEIGHT_INITS`, the module docstring says what each draws)."""
    check_init(init)
    module.apply(_INITS[init])


class Attention(nn.Module):
    """Multi-head self-attention: softmax(q kᵀ / √(D/heads)) v per head, then a linear map."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, qkv_bias: bool = False) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        # (B, N, 3D) -> (B, N, 3, heads, D/heads) -> (3, B, heads, N, D/heads)
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        h = attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        h = h.transpose(1, 2).reshape(b, n, d)  # (B, heads, N, D/heads) -> (B, N, D)
        return self.proj(h)


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(LN(x)), then x + MLP(LN(x)), MLP = Linear–act–Linear."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float = 0.0, activation: str = "tanh") -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), ACTIVATIONS[activation](), nn.Dropout(dropout),
                                 nn.Linear(mlp_dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:  # (B, N, D) -> (B, N, D)
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.drop(self.mlp(self.norm2(x)))


def patch_grid(image_size: int | Sequence[int], patch_size: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """((H, W), (H/p, W/p)) for ``image_size``, raising for sizes the patches don't tile."""
    hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(hw) != 2 or any(int(s) != s or s < 1 for s in hw):
        raise ValueError(f"image_size must be a positive int or (H, W), got {image_size!r}")
    if int(patch_size) != patch_size or patch_size < 1 or any(s % patch_size for s in hw):
        raise ValueError(f"image size {hw[0]}×{hw[1]} must be divisible by patch_size, got {patch_size!r}")
    return (int(hw[0]), int(hw[1])), (int(hw[0]) // patch_size, int(hw[1]) // patch_size)


def check_transformer_args(channels: tuple[str, int], dim: int, depth: int, heads: int, mlp_dim: int, z_channels: int,
                dropout: float, activation: str) -> None:
    """Raise ValueError naming the bad value; shared by ViTEncoder and ViTDecoder."""
    for name, value in (channels, ("dim", dim), ("heads", heads), ("mlp_dim", mlp_dim),
                        ("z_channels", z_channels)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if int(depth) != depth or depth < 0:
        raise ValueError(f"depth must be a non-negative integer, got {depth!r}")
    if dim % heads:
        raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
    if dim % 4:
        raise ValueError(f"dim must be divisible by 4 (2-D sin-cos position embedding), got {dim}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; valid: {', '.join(ACTIVATIONS)}")


def check_init(init: str) -> None:
    if init not in _INITS:
        raise ValueError(f"unknown init {init!r}; valid: {', '.join(WEIGHT_INITS)}")


def _grid_error(name: str, image_hw: tuple[int, int], grid: tuple[int, int], patch: int, got: str) -> ValueError:
    return ValueError(f"{name} was built for {image_hw[0]}×{image_hw[1]} images (a fixed {grid[0]}×{grid[1]} "
                      f"grid of {patch}-pixel patches, one position embedding each); got {got}. Build it with "
                      f"image_size set to the size you want to run.")


class ViTEncoder(nn.Module):
    """Image (B, in_channels, H, W) -> features (B, z_channels, H/p, W/p), (H, W) = ``image_size``."""

    def __init__(self, image_size: int | Sequence[int], patch_size: int, in_channels: int, dim: int, depth: int,
                 heads: int, mlp_dim: int, z_channels: int, dropout: float = 0.0, *,
                 activation: str = "tanh", init: str = "trunc_normal") -> None:
        super().__init__()
        check_transformer_args(("in_channels", in_channels), dim, depth, heads, mlp_dim, z_channels, dropout,
                               activation)
        check_init(init)
        self.image_size, self.grid = patch_grid(image_size, patch_size)
        self.in_channels, self.z_channels, self.dim = in_channels, z_channels, dim
        self.downsample_factor = patch_size
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.register_buffer("pos_embed", sincos_2d(dim, *self.grid), persistent=False)  # (h·w, D)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_dim, dropout, activation) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.proj_out = nn.Linear(dim, z_channels) if z_channels != dim else nn.Identity()
        init_weights(self, init)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected images (B, {self.in_channels}, H, W), got shape {tuple(x.shape)}")
        if tuple(x.shape[2:]) != self.image_size:
            raise _grid_error("ViTEncoder", self.image_size, self.grid, self.downsample_factor,
                              f"{x.shape[2]}×{x.shape[3]} images")
        h = self.patch_embed(x)  # (B, D, h, w)
        b, _, gh, gw = h.shape
        h = h.flatten(2).transpose(1, 2) + self.pos_embed  # (B, D, h, w) -> (B, h·w, D)
        for block in self.blocks:
            h = block(h)
        z = self.proj_out(self.norm(h))  # (B, h·w, z_channels)
        return z.transpose(1, 2).reshape(b, self.z_channels, gh, gw)  # -> (B, z_channels, h, w)


class ViTDecoder(nn.Module):
    """Features (B, z_channels, H/p, W/p) -> image (B, out_channels, H, W): the encoder mirrored.

    ``conv_out`` (a stride-p transposed conv, kernel p) is the last layer: a per-token linear map
    dim -> p·p·out_channels, each token's output laid down on its own p×p patch.
    """

    def __init__(self, image_size: int | Sequence[int], patch_size: int, out_channels: int, dim: int, depth: int,
                 heads: int, mlp_dim: int, z_channels: int, dropout: float = 0.0, *,
                 activation: str = "tanh", init: str = "trunc_normal") -> None:
        super().__init__()
        check_transformer_args(("out_channels", out_channels), dim, depth, heads, mlp_dim, z_channels, dropout,
                               activation)
        check_init(init)
        self.image_size, self.grid = patch_grid(image_size, patch_size)
        self.out_channels, self.z_channels, self.dim = out_channels, z_channels, dim
        self.downsample_factor = patch_size
        self.proj_in = nn.Linear(z_channels, dim) if z_channels != dim else nn.Identity()
        self.register_buffer("pos_embed", sincos_2d(dim, *self.grid), persistent=False)  # (h·w, D)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_dim, dropout, activation) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.conv_out = nn.ConvTranspose2d(dim, out_channels, patch_size, stride=patch_size)
        init_weights(self, init)

    def forward(self, z: Tensor) -> Tensor:
        if z.dim() != 4 or z.shape[1] != self.z_channels:
            raise ValueError(f"expected features (B, {self.z_channels}, h, w), got shape {tuple(z.shape)}")
        b, _, gh, gw = z.shape
        if (gh, gw) != self.grid:
            raise _grid_error("ViTDecoder", self.image_size, self.grid, self.downsample_factor,
                              f"a {gh}×{gw} feature grid")
        h = self.proj_in(z.flatten(2).transpose(1, 2)) + self.pos_embed  # (B, z, h, w) -> (B, h·w, D)
        for block in self.blocks:
            h = block(h)
        h = self.norm(h).transpose(1, 2).reshape(b, self.dim, gh, gw)  # (B, h·w, D) -> (B, D, h, w)
        return self.conv_out(h)  # (B, D, h, w) -> (B, out_channels, h·p, w·p)


def build_vit_tokenizer(
    *,
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
    activation: str = "tanh",
    projection: str = "conv",
    init: str = "trunc_normal",
) -> VQTokenizer:
    """A :class:`VQTokenizer` with a :class:`ViTEncoder` / :class:`ViTDecoder` of the same shape.

    ``quantizer`` is a built :class:`VectorQuantizer` with ``dim == embed_dim``, or its keyword
    arguments without ``dim``. ``out_channels`` defaults to ``in_channels``; ``init`` is one of
    :data:`WEIGHT_INITS`. The module docstring maps Table 10's ViT-VQGAN small to these arguments.
    """
    common = {"image_size": image_size, "patch_size": patch_size, "dim": dim, "depth": depth, "heads": heads,
              "mlp_dim": mlp_dim, "z_channels": z_channels, "dropout": dropout, "activation": activation,
              "init": init}
    return mirrored_tokenizer(ViTEncoder, ViTDecoder, common, quantizer, embed_dim, in_channels, out_channels,
                              projection)


def mirrored_tokenizer(encoder_cls, decoder_cls, common: dict, quantizer, embed_dim: int, in_channels: int,
                       out_channels: int | None, projection: str = "conv") -> VQTokenizer:
    """A :class:`VQTokenizer` of an encoder and a decoder built from the same ``common`` arguments
    (transformer tokenizers: ViT, TimeSformer); ``out_channels`` defaults to ``in_channels``."""
    quantizer = as_quantizer(quantizer, embed_dim)
    encoder = encoder_cls(in_channels=in_channels, **common)
    decoder = decoder_cls(out_channels=in_channels if out_channels is None else out_channels, **common)
    return VQTokenizer(encoder, decoder, quantizer, embed_dim=embed_dim, z_channels=common["z_channels"],
                       projection=projection)
