"""Tokenizer models: the convolutional VQGAN, ViT-VQGAN and TimeSformer (video) encoders/decoders
and the VQ tokenizer around them."""

from .build import build_tokenizer, quantizer_arguments
from .conv import AttnBlock, Decoder, Downsample, Encoder, ResnetBlock, Upsample, level_resolutions
from .tokenizer import TokenizerOutput, VQTokenizer, build_conv_tokenizer
from .video import TimeSformerDecoder, TimeSformerEncoder, build_timesformer_tokenizer
from .vit import ViTDecoder, ViTEncoder, build_vit_tokenizer

__all__ = [
    "AttnBlock",
    "Decoder",
    "Downsample",
    "Encoder",
    "ResnetBlock",
    "TimeSformerDecoder",
    "TimeSformerEncoder",
    "TokenizerOutput",
    "Upsample",
    "VQTokenizer",
    "ViTDecoder",
    "ViTEncoder",
    "build_conv_tokenizer",
    "build_tokenizer",
    "build_timesformer_tokenizer",
    "build_vit_tokenizer",
    "level_resolutions",
    "quantizer_arguments",
]
