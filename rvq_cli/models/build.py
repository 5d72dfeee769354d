"""The tokenizer a recipe's ``model`` section describes: the one place where that section of the
recipe tree meets the model constructors (they take explicit arguments)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .tokenizer import VQTokenizer, build_conv_tokenizer
from .video import build_timesformer_tokenizer
from .vit import build_vit_tokenizer

if TYPE_CHECKING:  # the schema imports the models' choice lists; the models never import the schema
    from ..config import ModelConfig


def build_tokenizer(model: ModelConfig, image_size: int, frames: int = 16) -> VQTokenizer:
    """The tokenizer a recipe's ``model`` section describes, for images of ``image_size`` (video
    models: clips of ``frames`` such frames)."""
    tokenizer = _build_family(model, image_size, frames)
    tokenizer.set_pixel_norm(model.pixel_norm)
    return tokenizer


def quantizer_arguments(model: ModelConfig) -> dict:
    """The quantizer's keyword arguments, without ``dim`` (the tokenizer's ``embed_dim``). For
    ``kind: vq`` the recipe's ``model.quantizer`` section as it is (its field names are the
    :class:`~rvq_cli.quantize.VectorQuantizer`'s parameter names); for ``kind: fsq`` the kind and
    its levels (:class:`~rvq_cli.quantize.FSQuantizer`; the recipe check refuses the other keys)."""
    q = model.quantizer
    if q.kind == "fsq":
        return {"kind": "fsq", "levels": list(q.levels)}
    return q.model_dump(exclude={"dim", "kind", "levels"})


def _build_family(model: ModelConfig, image_size: int, frames: int) -> VQTokenizer:
    enc, quantizer, embed_dim = model.encoder, quantizer_arguments(model), model.quantizer.dim
    if model.name == "timesformer":
        v = model.timesformer
        return build_timesformer_tokenizer(
            frames=frames, image_size=image_size, patch_size=v.patch_size, dim=v.dim, depth=v.depth, heads=v.heads,
            mlp_dim=v.mlp_dim, z_channels=v.dim, embed_dim=embed_dim, quantizer=quantizer, in_channels=v.in_channels,
            dropout=v.dropout, activation=v.activation, projection=model.projection, flavour=v.flavour, init=v.init,
        )
    if model.name == "vit":
        v = model.vit
        return build_vit_tokenizer(
            image_size=image_size, patch_size=v.patch_size, dim=v.dim, depth=v.depth, heads=v.heads,
            mlp_dim=v.mlp_dim, z_channels=v.dim, embed_dim=embed_dim, quantizer=quantizer, in_channels=v.in_channels,
            dropout=v.dropout, activation=v.activation, projection=model.projection, init=v.init,
        )
    return build_conv_tokenizer(
        ch=enc.ch, ch_mult=tuple(enc.ch_mult), attn_resolutions=tuple(enc.attn_resolutions), resolution=image_size,
        z_channels=enc.z_channels, embed_dim=embed_dim, quantizer=quantizer, in_channels=enc.in_channels,
        num_res_blocks=enc.num_res_blocks, dropout=enc.dropout, norm_groups=enc.norm_groups,
        projection=model.projection,
    )
