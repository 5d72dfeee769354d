"""The optimizers and the learning-rate schedule a recipe's ``optim`` sections describe (the
tokenizer is built by :func:`rvq_cli.models.build_tokenizer`, the losses in ``objective.py``)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import OptimConfig


def adam_kernel() -> dict:
    """Keyword arguments for torch's Adam/AdamW: the fused kernel (one pass over every parameter
    instead of a Python loop per tensor), which torch provides on CPUs and CUDA for float
    parameters. Same update rule; rounding may differ in the last bit from the loop."""
    return {"fused": True}


def build_optimizer(params, optim: OptimConfig) -> torch.optim.Optimizer:
    cls = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}[optim.name]
    return cls(params, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps, weight_decay=optim.weight_decay,
               **adam_kernel())


def lr_factor(step: int, optim: OptimConfig, total_steps: int) -> float:
    """Multiplier of the base lr at optimizer step ``step``: linear warmup, then constant or a
    cosine decay to ``min_lr_ratio`` at ``optim.decay_steps`` (default ``total_steps``), flat after."""
    if optim.warmup_steps and step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return 1.0
    end = optim.decay_steps if optim.decay_steps is not None else total_steps
    span = max(1, end - optim.warmup_steps)
    progress = min(1.0, (step - optim.warmup_steps) / span)
    return optim.min_lr_ratio + (1.0 - optim.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, optim: OptimConfig, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, optim, total_steps))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
