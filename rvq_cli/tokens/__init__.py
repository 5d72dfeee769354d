"""Datasets as token shards (``rvq encode``) and token shards back to images (``rvq decode``)."""

from .decode import DecodeReport, decode_dataset, decode_tokens
from .encode import EncodeError, EncodeReport, encode_dataset
from .format import FORMAT, TokenError, TokenSample, read_token_samples, token_dtype, token_files

__all__ = ["DecodeReport", "EncodeError", "EncodeReport", "FORMAT", "TokenError", "TokenSample", "decode_dataset",
           "decode_tokens", "encode_dataset", "read_token_samples", "token_dtype", "token_files"]
