"""Tokenizer models: the convolutional VQGAN encoder/decoder and the VQ tokenizer around them."""

from .conv import AttnBlock, Decoder, Downsample, Encoder, ResnetBlock, Upsample, level_resolutions
from .tokenizer import TokenizerOutput, VQTokenizer, build_conv_tokenizer

__all__ = [
    "AttnBlock",
    "Decoder",
    "Downsample",
    "Encoder",
    "ResnetBlock",
    "TokenizerOutput",
    "Upsample",
    "VQTokenizer",
    "build_conv_tokenizer",
    "level_resolutions",
]
