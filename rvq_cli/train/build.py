"""One ``build_*`` per component: the only place where the recipe tree meets the modules."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import ModelConfig, OptimConfig
from ..models import VQTokenizer, build_conv_tokenizer, build_timesformer_tokenizer, build_vit_tokenizer


def build_tokenizer(model: ModelConfig, image_size: int, frames: int = 16) -> VQTokenizer:
    """The tokenizer a recipe's ``model`` section describes, for images of ``image_size`` (video
    models: clips of ``frames`` such frames)."""
    tokenizer = _build_family(model, image_size, frames)
    tokenizer.set_pixel_norm(model.pixel_norm)
    return tokenizer


def _build_family(model: ModelConfig, image_size: int, frames: int) -> VQTokenizer:
    enc, q = model.encoder, model.quantizer
    quantizer = dict(
        codebook_size=q.codebook_size, estimator=q.estimator, gamma=q.gamma, lookup=q.lookup, update=q.update,
        decay=q.decay, beta=q.beta, codebook_dim=q.codebook_dim, init=q.init, kmeans_iters=q.kmeans_iters,
        dead_code_threshold=q.dead_code_threshold, epsilon=q.epsilon, temperature=tuple(q.temperature),
        kl_weight=q.kl_weight, ema_counts=q.ema_counts, cosine_output=q.cosine_output, vq_loss=q.vq_loss,
        cosine_init=q.cosine_init,
        gumbel_logits=q.gumbel_logits, kl_warmup_steps=q.kl_warmup_steps, temperature_steps=q.temperature_steps,
        gumbel_sample=q.gumbel_sample,
    )
    if model.name == "timesformer":
        v = model.timesformer
        return build_timesformer_tokenizer(
            frames=frames, image_size=image_size, patch_size=v.patch_size, dim=v.dim, depth=v.depth, heads=v.heads,
            mlp_dim=v.mlp_dim, z_channels=v.dim, embed_dim=q.dim, quantizer=quantizer, in_channels=v.in_channels,
            dropout=v.dropout, activation=v.activation, projection=model.projection, flavour=v.flavour, init=v.init,
        )
    if model.name == "vit":
        v = model.vit
        return build_vit_tokenizer(
            image_size=image_size, patch_size=v.patch_size, dim=v.dim, depth=v.depth, heads=v.heads,
            mlp_dim=v.mlp_dim, z_channels=v.dim, embed_dim=q.dim, quantizer=quantizer, in_channels=v.in_channels,
            dropout=v.dropout, activation=v.activation, projection=model.projection, init=v.init,
        )
    return build_conv_tokenizer(
        ch=enc.ch, ch_mult=tuple(enc.ch_mult), attn_resolutions=tuple(enc.attn_resolutions), resolution=image_size,
        z_channels=enc.z_channels, embed_dim=q.dim, quantizer=quantizer, in_channels=enc.in_channels,
        num_res_blocks=enc.num_res_blocks, dropout=enc.dropout, norm_groups=enc.norm_groups,
        projection=model.projection,
    )


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
