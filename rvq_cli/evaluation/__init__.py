"""Measuring a trained tokenizer's reconstructions (``rvq eval``): metrics, r-FID / r-IS, r-FVD."""

from .evaluator import EvalError, EvalResult, evaluate

__all__ = ["EvalError", "EvalResult", "evaluate"]
