"""Video shards: streaming clip batches (mp4 encoding and clip decoding: ``mp4.py``).

Video shards are webdataset tars with one sample per video: ``KEY.mp4`` (the encoded bytes)
and ``KEY.json`` (``{"fps": int, "frames": int}``); write them with ``write_shards``.

A clip is ``frames`` frames taken every ``stride`` frames, so it spans
``(frames - 1) * stride + 1`` source frames (``mp4.clip_span``). Training clips start at a random frame (one
``random.Random`` per sample, from the stream's seed and the sample's position); validation
clips are *centred* in the video (start ``(n - span) // 2``), so a validation clip sees the
middle of the action rather than a fade-in. Videos shorter than the span are skipped and
counted, like corrupt ones. Frames are resized and centre-cropped exactly like validation
images (``images.center_crop``: PIL bicubic on the short side, per frame, then the central
square), in training too; training adds an optional horizontal flip of the whole clip.

``video_batches`` streams with the semantics of ``stream.image_batches`` (resampled seeded
training stream per (seed, rank, worker) with exact resume via ``start_batch``; validation
is one pass split over ranks and workers); it reuses that module's shard reader, helpers and
option checks.
"""

from __future__ import annotations

import operator
import os

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from .format import expand_pattern
from .images import center_crop
from .mp4 import clip_span, decode_clip
from .sources import resolve_data
from .stream import ShardStream, check_batch_options

VIDEO_FIELDS = ("mp4",)  # fields of a sample that may hold the encoded video, in the order tried


def resize_center_crop(clip: np.ndarray, size: int) -> np.ndarray:
    """uint8 (T, H, W, 3) -> (T, size, size, 3): every frame resized so its short side is
    ``size`` (PIL bicubic, as ``images.center_crop``; the same geometry for every frame), then
    the central square."""
    return np.stack([center_crop(Image.fromarray(f), size) for f in clip])


def sample_video(sample: dict) -> bytes:
    """The encoded video bytes of a webdataset sample; raises KeyError when it has none."""
    for field in VIDEO_FIELDS:
        if field in sample:
            return sample[field]
    have = ", ".join(k for k in sample if not k.startswith("__")) or "nothing"
    raise KeyError(f"sample {sample.get('__key__')!r} has no video field ({'/'.join(VIDEO_FIELDS)}); it has {have}")


def to_video_batch(clips: list[np.ndarray]) -> torch.Tensor:
    """uint8 (T, H, W, 3) clips -> float32 (B, 3, T, H, W) in [-1, 1] (0 -> -1, 255 -> 1)."""
    a = np.ascontiguousarray(np.stack(clips).transpose(0, 4, 1, 2, 3))  # (B, 3, T, H, W)
    return torch.from_numpy(a).float().div_(127.5).sub_(1.0)


class VideoShardStream(ShardStream):
    """Batches of decoded clips from video shards, for one rank; see ``video_batches``."""

    field, what = "video", "video clips"

    def __init__(self, shards: list[str], *, frames: int, stride: int, image_size: int, random_flip: bool, **kw):
        super().__init__(shards, **kw)
        self.frames, self.stride, self.image_size, self.random_flip = frames, stride, image_size, random_flip
        self.hint = (f"Are these video shards (mp4 fields) with videos of at least {clip_span(frames, stride)} "
                     f"frames ({frames} frames at stride {stride})?")

    def _decode(self, sample: dict, w: int, n: int) -> tuple[np.ndarray, bool]:
        """The raw clip of the n-th sample of stream w and whether to flip it (random start and
        flip in training, from the sample's own RNG; centred clip in validation)."""
        rng = self._rng(w, n) if self.train else None
        clip = decode_clip(sample_video(sample), frames=self.frames, stride=self.stride, rng=rng)
        return clip, rng is not None and self.random_flip and rng.random() < 0.5

    def _finish(self, item: tuple[np.ndarray, bool], w: int, n: int) -> np.ndarray:
        clip, flip = item
        clip = resize_center_crop(clip, self.image_size)  # (T, S, S, 3)
        return clip[:, :, ::-1] if flip else clip

    def _collate(self, arrays: list) -> torch.Tensor:
        return to_video_batch(arrays)


def video_batches(pattern: str | os.PathLike, *, frames: int, stride: int = 1, image_size: int, batch_size: int,
                  train: bool, seed: int, rank: int = 0, world_size: int = 1, num_workers: int = 0,
                  random_flip: bool = False, shuffle_buffer: int = 100, start_batch: int = 0) -> DataLoader:
    """Batches ``{"video": float32 (B, 3, T, S, S) in [-1, 1], "key": list[str], "skipped": int}``
    (T = ``frames``, S = ``image_size``) from the video shards named by ``pattern``, for process
    ``rank`` of ``world_size``.

    ``train=True``: an infinite stream; shards resampled per (rank, worker) with a seeded RNG, a
    shuffle buffer of ``shuffle_buffer`` samples (0 or 1: none; it holds encoded bytes), a random
    clip start per sample and (``random_flip``) a horizontal flip of the whole clip. The same
    arguments give the same batches; ``start_batch=k`` yields exactly batches k, k+1, ...

    ``train=False``: one pass over this rank's shards (r, r+W, ...), in order, centred clips; each
    worker's last partial batch is kept. Ranks beyond the number of shards get no batches.

    Corrupt, video-less and too-short samples are skipped and counted in ``skipped`` (never fatal
    unless 1,000 in a row fail), exactly as in ``image_batches``.
    """
    check_batch_options(train=train, rank=rank, world_size=world_size, frames=frames, stride=stride,
                        image_size=image_size, batch_size=batch_size, num_workers=num_workers,
                        shuffle_buffer=shuffle_buffer, start_batch=start_batch)
    pattern = resolve_data(pattern, video=True, split="train" if train else "val")  # "demo": the demo videos
    seed, rank = operator.index(seed), operator.index(rank)  # plain ints: seeds are hashed from their repr
    ds = VideoShardStream(expand_pattern(pattern), frames=frames, stride=stride, image_size=image_size,
                          batch_size=batch_size, train=train, seed=seed, rank=rank, world_size=world_size,
                          random_flip=random_flip, shuffle_buffer=shuffle_buffer, start_batch=start_batch)
    return DataLoader(ds, batch_size=None, num_workers=num_workers, generator=torch.Generator().manual_seed(seed))
