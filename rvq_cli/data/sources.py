"""Data specs -> shard patterns: the one place that knows what ``"demo"`` means.

A data spec is what recipes (``data.train`` / ``data.val``), ``rvq eval --data`` and ``rvq encode``
take: ``"demo"`` (the built-in demo set: photographs for an image model, the sprite videos for a
video model, built on first use), or a shard pattern or folder, which is returned as it is.
"""

from __future__ import annotations

import os

from .demo import demo_shards
from .video_demo import demo_video_shards

DEMO = "demo"  # the data spec naming the demo set (the recipe schema takes it from here)
SPLITS = ("train", "val")


def resolve_data(spec: str | os.PathLike, *, video: bool = False, split: str = "train") -> str:
    """The shard pattern of ``spec`` for ``split`` ("train" or "val"): for ``"demo"`` the demo
    set's (``demo_video_shards`` when ``video``, else ``demo_shards``; default cache, built when
    missing), for anything else ``spec`` itself (a pattern, or a folder for readers of folders)."""
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    spec = os.fspath(spec)
    if spec != DEMO:
        return spec
    demo = demo_video_shards() if video else demo_shards()
    return demo.val if split == "val" else demo.train
