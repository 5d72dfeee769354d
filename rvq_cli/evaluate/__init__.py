"""Using trained tokenizers: loading checkpoints, and measuring reconstructions (``rvq eval``)."""

from .evaluator import EvalError, EvalResult, evaluate
from .load import CheckpointError, LoadedTokenizer, load_tokenizer, resolve_checkpoint, tokenizer_id

__all__ = ["CheckpointError", "EvalError", "EvalResult", "LoadedTokenizer", "evaluate", "load_tokenizer",
           "resolve_checkpoint", "tokenizer_id"]
