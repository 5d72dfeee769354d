"""VQ tokenizer: encoder → projection → VectorQuantizer → projection → decoder (VQGAN, Esser et al.
2021). The projections are taming's 1×1 convolutions, or none at all where the encoder's channels
are the code dimension (the official Table 1 VQ-VAE of the rotation-trick paper), or a 1×1 conv
followed by a LayerNorm over channels (its cosine-lookup 1024 × 32 model).

Tokens are the quantizer's code indices on the latent grid (B, H/f, W/f). Decoding tokens runs
exactly the operations the forward pass runs after the quantizer, on exactly the values it saw
(the estimators' forward value is the code vector, bit for bit), so in eval mode
``decode_indices(encode(x))`` equals ``forward(x).reconstruction`` bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..quantize import FSQuantizer, QuantizeOutput, VectorQuantizer
from .conv import Decoder, Encoder

__all__ = ["PIXEL_NORMS", "PROJECTIONS", "QUANTIZER_KINDS", "ChannelLayerNorm", "TokenizerOutput", "VQTokenizer",
           "build_conv_tokenizer"]

# Around the quantizer: taming's 1×1 convs; none (encoder channels = code dimension); or a 1×1 conv
# then LayerNorm over the channels (the official Table 1 cosine model: Linear(256 → 32) + LayerNorm).
PROJECTIONS = ("conv", "none", "conv_layernorm")

# The quantization layer: vq (nearest code of a codebook, VectorQuantizer) or fsq (finite scalar
# quantization, FSQuantizer: per-channel rounding to an implicit grid of codes).
QUANTIZER_KINDS = ("vq", "fsq")

# What the encoder sees and the decoder emits, from the [-1, 1] images everything else in rvq holds:
# signed (the images as they are: taming, latent-diffusion), unit ([0, 1] pixels: ToTensor without
# Normalize, enhancing-transformers' ViT-VQGAN), or clip (the official Table 1 code's Normalize with
# CLIP's per-channel mean and std of [0, 1] pixels).
CLIP_MEAN, CLIP_STD = (0.4815, 0.4578, 0.4082), (0.2686, 0.2613, 0.2758)  # rotation_trick imagenet_dataset.py
PIXEL_NORMS = ("signed", "unit", "clip")


@dataclass
class TokenizerOutput:
    reconstruction: Tensor  # (B, C, H, W)
    quantize: QuantizeOutput  # quantized (B, embed_dim, h, w), indices (B, h, w), losses, metrics
    reconstruction_e: Tensor | None = None  # the ``exact`` estimator in training: decoded without quantization

    @property
    def indices(self) -> Tensor:
        """The tokens, (B, h, w) int64."""
        return self.quantize.indices


@contextmanager
def _lookup_only(quantizer: VectorQuantizer) -> Iterator[None]:
    """Run the quantizer in eval mode: a lookup that updates no codebook statistics."""
    was_training = quantizer.training
    quantizer.train(False)
    try:
        yield
    finally:
        quantizer.train(was_training)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of (B, C, *spatial) maps: what a per-position
    ``nn.LayerNorm(C)`` does to (B, *spatial, C) tokens."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)  # (B, C, ...) -> (B, ..., C) -> back


class VQTokenizer(nn.Module):
    """Image tokenizer: ``encoder`` → ``quant_conv`` (1×1, z_channels → embed_dim) → ``quantize`` →
    ``post_quant_conv`` (1×1, embed_dim → z_channels) → ``decoder``. Submodule names are taming's.

    ``encoder`` maps (B, C, H, W) to (B, z_channels, H/f, W/f) and ``decoder`` maps back; both
    must expose ``downsample_factor`` (f) and ``z_channels``, the encoder also ``in_channels``.
    ``projection`` (:data:`PROJECTIONS`): "conv" as above; "none" (identities: needs
    z_channels == embed_dim); "conv_layernorm" (the 1×1 conv, then LayerNorm over channels).
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, quantizer: VectorQuantizer, *,
                 embed_dim: int, z_channels: int, projection: str = "conv") -> None:
        super().__init__()
        if quantizer.dim != embed_dim:
            raise ValueError(f"the quantizer's input dim ({quantizer.dim}) must equal embed_dim ({embed_dim})")
        if projection not in PROJECTIONS:
            raise ValueError(f"unknown projection {projection!r}; valid: {', '.join(PROJECTIONS)}")
        if projection == "none" and z_channels != embed_dim:
            raise ValueError(f"projection 'none' needs z_channels == embed_dim, got {z_channels} and {embed_dim}")
        for name, module in (("encoder", encoder), ("decoder", decoder)):
            if module.z_channels != z_channels:
                raise ValueError(f"the {name} has z_channels={module.z_channels}, expected {z_channels}")
        if encoder.downsample_factor != decoder.downsample_factor:
            raise ValueError(f"encoder and decoder down-sampling factors differ: "
                             f"{encoder.downsample_factor} vs {decoder.downsample_factor}")
        self.encoder, self.decoder = encoder, decoder
        # 2 for images (B, C, H, W); 3 for video clips (B, C, T, H, W), whose frames keep their own tokens
        self.spatial_dims: int = getattr(encoder, "spatial_dims", 2)
        conv = nn.Conv3d if self.spatial_dims == 3 else nn.Conv2d
        if projection == "none":
            self.quant_conv, self.post_quant_conv = nn.Identity(), nn.Identity()
        else:
            self.quant_conv = conv(z_channels, embed_dim, 1)
            if projection == "conv_layernorm":
                self.quant_conv = nn.Sequential(self.quant_conv, ChannelLayerNorm(embed_dim))
            self.post_quant_conv = conv(embed_dim, z_channels, 1)
        self.quantize = quantizer
        self.projection = projection
        self.embed_dim, self.z_channels = embed_dim, z_channels
        self.in_channels: int = encoder.in_channels
        self.downsample_factor: int = encoder.downsample_factor
        self.set_pixel_norm("signed")

    def set_pixel_norm(self, name: str) -> None:
        """What the encoder sees (and the decoder emits) for [-1, 1] images: "signed", the images
        themselves; "unit", x01 = (x + 1)/2; or "clip", (x01 − mean) / std with CLIP's per-channel
        statistics. Each is (x − shift) / scale: unit shift −1, scale 2; clip shift 2·mean − 1,
        scale 2·std. The tokenizer's inputs and
        outputs stay [-1, 1] images either way; :attr:`pixel_scale` lets the pixel loss be taken in
        the model's space, as the code that used the normalisation did."""
        if name not in PIXEL_NORMS:
            raise ValueError(f"unknown pixel_norm {name!r}; valid: {', '.join(PIXEL_NORMS)}")
        if name == "clip" and self.in_channels != 3:
            raise ValueError("pixel_norm 'clip' has statistics for 3 (RGB) channels; this model has "
                             f"{self.in_channels}")
        self.pixel_norm = name
        shape = (1, self.in_channels) + (1,) * self.spatial_dims
        if name == "clip":
            shift = torch.tensor(CLIP_MEAN) * 2.0 - 1.0
            scale = torch.tensor(CLIP_STD) * 2.0
        elif name == "unit":
            shift, scale = torch.full((self.in_channels,), -1.0), torch.full((self.in_channels,), 2.0)
        else:
            shift, scale = torch.zeros(self.in_channels), torch.ones(self.in_channels)
        # not in the state dict: they follow from the recipe, and checkpoints stay what they were
        self.register_buffer("pixel_shift", shift.reshape(shape), persistent=False)
        self.register_buffer("_pixel_scale", scale.reshape(shape), persistent=False)

    @property
    def pixel_scale(self) -> Tensor | None:
        """Per-channel divisor (1, C, 1, ...) that maps a [-1, 1] image difference to the model's
        space (None for "signed": the identity)."""
        return None if self.pixel_norm == "signed" else self._pixel_scale

    def _to_model(self, x: Tensor) -> Tensor:
        return x if self.pixel_norm == "signed" else (x - self.pixel_shift) / self._pixel_scale

    def _from_model(self, y: Tensor) -> Tensor:
        """Back to [-1, 1] in the buffers' precision (fp32 unless the model was cast): a bf16
        decoder output under autocast is not rounded again."""
        return y if self.pixel_norm == "signed" else y * self._pixel_scale + self.pixel_shift

    def latent_shape(self, image_size: int | Sequence[int]) -> tuple[int, ...]:
        """Token grid (h, w) for images of ``image_size`` (an int for square images, or (H, W));
        for a video tokenizer (T, h, w) for clips of ``image_size`` = (T, H, W) (frames keep their
        own tokens)."""
        f = self.downsample_factor
        if self.spatial_dims == 3:
            thw = tuple(image_size) if not isinstance(image_size, int) else ()
            if len(thw) != 3 or thw[0] < 1 or any(s < 1 or s % f for s in thw[1:]):
                raise ValueError(f"clip size {image_size} must be (T, H, W) with H and W divisible by the "
                                 f"down-sampling factor f = {f}")
            return thw[0], thw[1] // f, thw[2] // f
        hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if len(hw) != 2 or any(s < 1 or s % f for s in hw):
            raise ValueError(f"image size {image_size} must be (H, W) with both divisible by the "
                             f"down-sampling factor f = {f}")
        return hw[0] // f, hw[1] // f

    def _check_image(self, x: Tensor) -> None:
        if self.spatial_dims == 3:
            if x.dim() != 5 or x.shape[1] != self.in_channels:
                raise ValueError(f"expected clips (B, {self.in_channels}, T, H, W), got shape {tuple(x.shape)}")
        elif x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected images (B, {self.in_channels}, H, W), got shape {tuple(x.shape)}")
        self.latent_shape(tuple(x.shape[2:]))

    @property
    def last_layer(self) -> Tensor:
        """Weight of the decoder's last layer (VQGAN's adaptive GAN weight differentiates to it)."""
        return self.decoder.conv_out.weight

    def encode_latents(self, x: Tensor) -> Tensor:
        """Continuous latents before quantization: (B, C, H, W) -> (B, embed_dim, H/f, W/f)."""
        self._check_image(x)
        return self.quant_conv(self.encoder(self._to_model(x)))

    def decode_codes(self, quantized: Tensor) -> Tensor:
        """Image from quantized latents (B, embed_dim, h, w) -> (B, C, h·f, w·f); the one decode
        path shared by ``forward`` and ``decode_indices``."""
        return self._from_model(self.decoder(self.post_quant_conv(quantized)))

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Tokens of images ``x`` (B, C, H, W): (B, H/f, W/f) int64. The lookup never updates
        the codebook, whatever the mode; the encoder runs in the module's mode (use eval)."""
        z = self.encode_latents(x)
        with _lookup_only(self.quantize):
            return self.quantize(z).indices

    def decode_indices(self, indices: Tensor) -> Tensor:
        """Images from tokens ``indices`` (B, h, w) -> (B, C, h·f, w·f)."""
        if indices.dim() != 1 + self.spatial_dims:
            grid = "(B, T, h, w)" if self.spatial_dims == 3 else "(B, h, w)"
            raise ValueError(f"expected token indices {grid}, got shape {tuple(indices.shape)}")
        codes = self.quantize.indices_to_codes(indices)  # fp32; forward hands codes on in the model's dtype
        return self.decode_codes(codes.to(self.decoder_dtype))

    @property
    def decoder_dtype(self) -> torch.dtype:
        """The dtype the layers after the quantizer compute in (the model may be cast)."""
        return next(self.decoder.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.decoder.parameters()).device

    def forward(self, x: Tensor) -> TokenizerOutput:
        """Reconstruct ``x`` (B, C, H, W) through the quantizer; in training mode the quantizer
        updates its codebook and the gradient reaches the encoder through its estimator."""
        out = self.quantize(self.encode_latents(x))
        rec_e = None if out.passthrough is None else self.decode_codes(out.passthrough)  # exact: a second pass
        return TokenizerOutput(reconstruction=self.decode_codes(out.quantized), quantize=out, reconstruction_e=rec_e)


def as_quantizer(quantizer: VectorQuantizer | FSQuantizer | Mapping[str, Any],
                 embed_dim: int) -> VectorQuantizer | FSQuantizer:
    """A built quantizer, or one built from its keyword arguments (without ``dim``: it is ``embed_dim``);
    a mapping's ``kind`` (:data:`QUANTIZER_KINDS`, default "vq") picks the class: "vq" a
    :class:`VectorQuantizer`, "fsq" an :class:`FSQuantizer` (e.g. ``{"kind": "fsq", "levels": [8, 5, 5, 5]}``)."""
    if isinstance(quantizer, Mapping):
        if "dim" in quantizer:
            raise ValueError("the quantizer's dim is set by embed_dim; leave 'dim' out of its arguments")
        args = dict(quantizer)
        kind = args.pop("kind", "vq")
        if kind not in QUANTIZER_KINDS:
            raise ValueError(f"unknown quantizer kind {kind!r}; valid: {', '.join(QUANTIZER_KINDS)}")
        return FSQuantizer(embed_dim, **args) if kind == "fsq" else VectorQuantizer(embed_dim, **args)
    if not isinstance(quantizer, (VectorQuantizer, FSQuantizer)):
        raise TypeError(f"quantizer must be an FSQuantizer, a VectorQuantizer or a mapping of its arguments, "
                        f"got {type(quantizer).__name__}")
    return quantizer


def build_conv_tokenizer(
    *,
    ch: int,
    ch_mult: Sequence[int],
    attn_resolutions: Sequence[int],
    resolution: int,
    z_channels: int,
    embed_dim: int,
    quantizer: VectorQuantizer | Mapping[str, Any],
    in_channels: int = 3,
    out_channels: int | None = None,
    num_res_blocks: int = 2,
    dropout: float = 0.0,
    norm_groups: int = 32,
    projection: str = "conv",
) -> VQTokenizer:
    """A :class:`VQTokenizer` with the convolutional :class:`Encoder`/:class:`Decoder`.

    ``quantizer`` is a built :class:`VectorQuantizer` with ``dim == embed_dim``, or its keyword
    arguments without ``dim`` (e.g. ``{"codebook_size": 1024, "estimator": "rotation"}``).
    ``out_channels`` defaults to ``in_channels``. Taming's f16 VQGAN: ch=128,
    ch_mult=(1, 1, 2, 2, 4), attn_resolutions=(16,), resolution=256, z_channels=256, embed_dim=256.
    """
    quantizer = as_quantizer(quantizer, embed_dim)
    common = dict(ch=ch, ch_mult=ch_mult, attn_resolutions=attn_resolutions, resolution=resolution,
                  z_channels=z_channels, num_res_blocks=num_res_blocks, dropout=dropout, norm_groups=norm_groups)
    encoder = Encoder(in_channels=in_channels, **common)
    decoder = Decoder(out_channels=in_channels if out_channels is None else out_channels, **common)
    return VQTokenizer(encoder, decoder, quantizer, embed_dim=embed_dim, z_channels=z_channels, projection=projection)
