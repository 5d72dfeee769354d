"""A recipe's data: its shard patterns and the loader of its batches, for training, evaluation
and comparison alike.

This module reads a ``Recipe`` (``rvq_cli.config``), which imports the rest of ``rvq_cli.data``
lazily; so ``rvq_cli.data`` does not import this module, and callers import it as
``rvq_cli.data.loader``.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from ..config import Recipe
from .sources import resolve_data
from .stream import image_batches
from .video import video_batches


def data_patterns(recipe: Recipe) -> tuple[str, str | None]:
    """The shard patterns of ``data.train`` and ``data.val`` (None: no validation set), the demo
    set resolved for the recipe's kind of model (``sources.resolve_data``)."""
    video, d = recipe.model.video, recipe.data
    val = None if d.val is None else resolve_data(d.val, video=video, split="val")
    return resolve_data(d.train, video=video, split="train"), val


def build_loader(pattern: str, recipe: Recipe, *, train: bool, rank: int = 0, world_size: int = 1,
                 start_batch: int = 0, batch_size: int | None = None, image_size: int | None = None,
                 num_workers: int | None = None) -> DataLoader:
    """Batches of ``pattern`` as the recipe reads them: images (``image_batches``), or clips of
    ``data.frames`` frames at ``data.frame_stride`` for a video model (``video_batches``), for
    process ``rank`` of ``world_size``. ``batch_size``, ``image_size`` and ``num_workers`` override
    the recipe's (``train.batch_size``, ``data.image_size``, ``data.num_workers``)."""
    d = recipe.data
    common = dict(image_size=d.image_size if image_size is None else image_size,
                  batch_size=recipe.train.batch_size if batch_size is None else batch_size, train=train,
                  seed=recipe.train.seed, rank=rank, world_size=world_size,
                  num_workers=d.num_workers if num_workers is None else num_workers,
                  random_flip=d.random_flip, shuffle_buffer=d.shuffle_buffer, start_batch=start_batch)
    if recipe.model.video:
        return video_batches(pattern, frames=d.frames, stride=d.frame_stride, **common)
    return image_batches(pattern, crop=d.crop, **common)


def batch_tensor(batch: dict) -> torch.Tensor:
    """The model input of a loader batch: ``image`` (B, C, H, W) or ``video`` (B, C, T, H, W)."""
    return batch["video"] if "video" in batch else batch["image"]
