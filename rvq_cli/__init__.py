"""rvq: train, evaluate and use vector-quantized image and video tokenizers with a choice of
gradient estimator through the quantizer (STE, the rotation trick, and their relatives)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rvq")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.1.0"
