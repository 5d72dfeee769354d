"""rvq: train, evaluate and use vector-quantized image and video tokenizers with a choice of
gradient estimator through the quantizer (STE, the rotation trick, and their relatives)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rvq")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.1.0"

# Entry points, imported on first use (``import rvq_cli`` stays light: the command reads
# __version__ before it knows which command runs). The subpackages are named apart from them
# (rvq_cli.training, rvq_cli.evaluation), so rvq_cli.train is always the function; comparison
# is rvq_cli.compare.compare (a function exported under its subpackage's name would be replaced
# by the subpackage as soon as that is imported).
_ENTRY_POINTS = {
    "load_recipe": ("rvq_cli.config", "load_recipe"),
    "load_tokenizer": ("rvq_cli.runs", "load_tokenizer"),
    "build_tokenizer": ("rvq_cli.models", "build_tokenizer"),
    "train": ("rvq_cli.training", "train"),
    "evaluate": ("rvq_cli.evaluation", "evaluate"),
    "encode_dataset": ("rvq_cli.tokens", "encode_dataset"),
    "decode_dataset": ("rvq_cli.tokens", "decode_dataset"),
}

__all__ = ["__version__", *_ENTRY_POINTS]


def __getattr__(name: str):
    if name in _ENTRY_POINTS:
        from importlib import import_module

        module, attr = _ENTRY_POINTS[name]
        return getattr(import_module(module), attr)
    raise AttributeError(f"module 'rvq_cli' has no attribute {name!r}")
