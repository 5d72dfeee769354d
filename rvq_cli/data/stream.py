"""Streaming batches from shards (``format.py``): the stream machinery images and videos share
(``ShardStream``, ``check_batch_options``), and image batches (``image_batches``).

Streams:

- training is an infinite stream over *resampled* shards: every (rank, worker) draws shards
  at random, with replacement, from the full list, with its own RNG seeded from
  (seed, rank, worker). No rank ever runs out of data, there is no epoch end to synchronise,
  and any number of processes × workers works with any number of shards (webdataset #188).
- validation is one finite pass: rank r of W reads shards r, r+W, ...; worker j of N reads
  every N-th of those. With fewer shards than ranks the ranks beyond the shard count get no
  validation batches (acceptable for validation, never used for training); write at least as
  many validation shards as ranks × workers to use them all (``max_count`` of ``write_shards`` /
  ``folder_to_shards``).
"""

from __future__ import annotations

import hashlib
import operator
import os
import random
import warnings
from abc import abstractmethod
from collections.abc import Iterable, Iterator

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys, tar_file_expander

from ..errors import describe
from .format import DataError, expand_pattern
from .images import center_crop, center_crop_native, random_crop, sample_image, to_batch
from .sources import resolve_data

MAX_FAILED_IN_A_ROW = 1000  # consecutive undecodable samples before the stream gives up


def _seed(*parts) -> int:
    """A 64-bit seed from a tuple of ints/strings, identical in every process and run."""
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little")


class _Errors:
    """Per-worker counters shared between the tar reader and the batcher."""

    def __init__(self):
        self.tar_errors = 0  # unreadable shard data since the last batch
        self.samples = 0  # samples read from tars so far

    def on_tar_error(self, exn: Exception) -> bool:
        warnings.warn(f"rvq: skipping unreadable shard data: {describe(exn)}", stacklevel=2)
        self.tar_errors += 1
        return True  # continue with the next member / shard

    def read(self, urls: Iterable[dict]) -> Iterator[dict]:
        """Samples from the shards in ``urls`` (dicts with "url"), counted; every shard file is
        closed as soon as the reader moves past it."""
        samples = group_by_keys(tar_file_expander(self._opened(urls), handler=self.on_tar_error),
                                handler=self.on_tar_error)
        for s in samples:
            self.samples += 1
            yield s

    def _opened(self, urls: Iterable[dict]) -> Iterator[dict]:
        for u in urls:
            try:
                stream = wds.gopen(u["url"], "rb")
            except Exception as exn:  # unreadable file: count it, go on with the next shard
                self.on_tar_error(exn)
                continue
            try:
                yield {"url": u["url"], "stream": stream}
            finally:
                stream.close()


def _resampled(shards: list[str], rng: random.Random, errors: _Errors) -> Iterator[dict]:
    """Shards drawn with replacement, forever; gives up when many draws in a row yield nothing."""
    empty, last = 0, -1
    limit = max(100, 10 * len(shards))
    while True:
        empty, last = (empty + 1, last) if errors.samples == last else (0, errors.samples)
        if empty > limit:
            raise DataError(f"{limit} shards in a row gave no samples (of {len(shards)} shards, e.g. "
                            f"{shards[0]}); the shards are empty or unreadable.")
        yield {"url": rng.choice(shards)}


class ShardStream(IterableDataset):
    """Batches of decoded samples from shards, for one rank: the streaming, resuming and
    skip-counting that image and video streams share. A subclass says how a sample is decoded
    (``_decode``, which raises for an unusable sample), how a decoded sample becomes an array of
    the batch (``_finish``), how arrays are stacked (``_collate``) and under which key (``field``)."""

    field = "item"
    what, hint = "samples", ""  # for the message when many samples in a row fail

    def __init__(self, shards: list[str], *, batch_size: int, train: bool, seed: int, rank: int, world_size: int,
                 shuffle_buffer: int, start_batch: int):
        super().__init__()
        self.shards, self.batch_size, self.train = shards, batch_size, train
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.shuffle_buffer, self.start_batch = shuffle_buffer, start_batch

    @abstractmethod
    def _decode(self, sample: dict, w: int, n: int):
        ...

    @abstractmethod
    def _finish(self, item, w: int, n: int):
        ...

    @abstractmethod
    def _collate(self, arrays: list) -> torch.Tensor:
        ...

    def _rng(self, w: int, n: int) -> random.Random:
        """One RNG per sample, from its position n in stream w: skipping samples when resuming
        needs no augmentation work to stay in step."""
        return random.Random(_seed(self.seed, self.rank, w, "view", n))

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        j, nw = (0, 1) if info is None else (info.id, info.num_workers)
        errors = _Errors()
        if not self.train:
            mine = self.shards[self.rank :: self.world_size][j::nw]
            return self._batches(errors.read({"url": u} for u in mine), errors, w=j, skip=0)
        # DataLoader hands out batch i to worker i % nw. Resuming at batch k, loader worker j
        # plays the stream that worker (j + k) % nw had, so batch k comes first.
        w = (j + self.start_batch) % nw
        skip = len(range(w, self.start_batch, nw))  # batches of stream w before batch k
        rng = random.Random(_seed(self.seed, self.rank, w, "shards"))
        samples = errors.read(_resampled(self.shards, rng, errors))
        if self.shuffle_buffer > 1:
            rng = random.Random(_seed(self.seed, self.rank, w, "shuffle"))
            samples = wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)(iter(samples))
        return self._batches(samples, errors, w=w, skip=skip)

    def _batches(self, samples: Iterable[dict], errors: _Errors, w: int, skip: int) -> Iterator[dict]:
        """Group decodable samples into batches. ``skipped`` counts the samples dropped after the
        previous batch was complete up to this one's completion; drops after the last sample of a
        finite stream are added to its last batch (a full batch is therefore held back until the
        next good sample arrives)."""
        B, n, failed, in_a_row = self.batch_size, 0, 0, 0
        arrays, keys, pending = [], [], None
        for sample in samples:
            try:
                item = self._decode(sample, w, n)
            except Exception as exn:  # corrupt, truncated, too short, no such field
                failed, in_a_row = failed + 1, in_a_row + 1
                if in_a_row >= MAX_FAILED_IN_A_ROW:
                    raise DataError(f"{in_a_row} samples in a row could not be decoded as {self.what} (last: "
                                    f"{sample.get('__key__')!r} in {sample.get('__url__')}: {describe(exn)}). "
                                    f"{self.hint}") from None
                continue
            in_a_row = 0
            if n < skip * B:  # resuming: already consumed by batches before start_batch
                n += 1
                if n % B == 0:
                    failed, errors.tar_errors = 0, 0
                continue
            if pending is not None:
                yield pending
                pending = None
            arrays.append(self._finish(item, w, n))
            keys.append(sample["__key__"])
            n += 1
            if len(arrays) == B:
                pending = {self.field: self._collate(arrays), "key": keys, "skipped": failed + errors.tar_errors}
                arrays, keys, failed, errors.tar_errors = [], [], 0, 0
        trailing = failed + errors.tar_errors
        if arrays:  # validation: the last partial batch is kept
            yield {self.field: self._collate(arrays), "key": keys, "skipped": trailing}
        elif pending is not None:
            pending["skipped"] += trailing
            yield pending
        elif trailing:
            warnings.warn(f"rvq: {trailing} samples skipped (undecodable) and none left for a batch", stacklevel=2)


def check_batch_options(*, train: bool, rank: int, world_size: int, image_size: int, batch_size: int,
                        num_workers: int, shuffle_buffer: int, start_batch: int, frames: int | None = None,
                        stride: int | None = None) -> None:
    """Raise ValueError for options ``image_batches`` and ``video_batches`` cannot stream with:
    each count must be an integer (a bool is not one), at least 0 for ``num_workers``,
    ``shuffle_buffer`` and ``start_batch`` and at least 1 for the others; ``rank`` must be in
    0..world_size-1; ``start_batch`` resumes training streams only. ``frames`` and ``stride``:
    the clip of a video stream (None: an image stream, not checked)."""
    clip = {"frames": frames, "stride": stride} if frames is not None or stride is not None else {}
    counts = {**clip, "image_size": image_size, "batch_size": batch_size, "world_size": world_size,
              "num_workers": num_workers, "shuffle_buffer": shuffle_buffer, "start_batch": start_batch}
    for name, v in counts.items():
        lo = 0 if name in ("num_workers", "shuffle_buffer", "start_batch") else 1
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise ValueError(f"{name} must be an integer ≥ {lo}, got {v!r}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in 0..{world_size - 1} for world_size {world_size}, got {rank}")
    if start_batch and not train:
        raise ValueError("start_batch resumes a training stream; a validation pass always starts at the beginning")


class ImageShardStream(ShardStream):
    """Batches of decoded, cropped images from shards, for one rank; see ``image_batches``."""

    field, what, hint = "image", "images", "Are these image shards (png/jpg fields)?"

    def __init__(self, shards: list[str], *, image_size: int, random_flip: bool, crop: str = "random", **kw):
        super().__init__(shards, **kw)
        self.image_size, self.random_flip, self.crop = image_size, random_flip, crop

    def _decode(self, sample: dict, w: int, n: int):
        return sample_image(sample)

    def _finish(self, im, w: int, n: int):
        if self.crop == "center":  # training and evaluation alike: the stored image's centre
            a = center_crop_native(im, self.image_size)
            return a[:, ::-1].copy() if self.train and self.random_flip and self._rng(w, n).random() < 0.5 else a
        if not self.train:
            return center_crop(im, self.image_size)
        return random_crop(im, self.image_size, self._rng(w, n), self.random_flip)

    def _collate(self, arrays: list) -> torch.Tensor:
        return to_batch(arrays)


def image_batches(pattern: str | os.PathLike, *, image_size: int, batch_size: int, train: bool, seed: int,
                  rank: int = 0, world_size: int = 1, num_workers: int = 0, random_flip: bool = True,
                  shuffle_buffer: int = 1000, start_batch: int = 0, crop: str = "random") -> DataLoader:
    """Batches ``{"image": float32 (B, 3, S, S) in [-1, 1], "key": list[str], "skipped": int}``
    from the image shards named by ``pattern`` (or ``"demo"``: the built-in demo shards, see
    ``sources.resolve_data``), for process ``rank`` of ``world_size``.

    ``train=True``: an infinite stream. Shards are resampled per (rank, worker) with a seeded
    RNG, samples pass a shuffle buffer of ``shuffle_buffer`` (0 or 1: none), images whose short
    side is below ``image_size`` are upscaled to it, then a random ``image_size`` square crop and
    (``random_flip``) a random horizontal flip. The same arguments give the same batches;
    ``start_batch=k`` yields exactly batches k, k+1, ... of that stream (the skipped samples are
    decoded to know which ones are corrupt, but not cropped).

    ``train=False``: one pass over this rank's shards (r, r+W, ...), in order, short side resized
    to ``image_size`` and centre-cropped; each worker's last partial batch is kept. Ranks
    beyond the number of shards get no batches.

    ``crop="center"``: training and evaluation both take the central ``image_size`` square of
    each stored image, resized only when it is smaller (flips still follow ``random_flip`` in
    training): the official Table 1 pipeline.

    Corrupt or image-less samples (and unreadable shard data) are skipped, never fatal unless
    1,000 in a row fail; ``skipped`` counts what the worker that made the batch dropped since its
    previous batch (drops at the very end of a validation pass go to its last batch), so the sum
    over batches is the total.
    Batches come from ``num_workers`` DataLoader worker processes (0: in this process).
    """
    check_batch_options(train=train, rank=rank, world_size=world_size, image_size=image_size, batch_size=batch_size,
                        num_workers=num_workers, shuffle_buffer=shuffle_buffer, start_batch=start_batch)
    if crop not in ("random", "center"):
        raise ValueError(f"crop must be 'random' or 'center', got {crop!r}")
    pattern = resolve_data(pattern, split="train" if train else "val")  # "demo": the demo photographs
    seed, rank = operator.index(seed), operator.index(rank)  # plain ints: seeds are hashed from their repr
    ds = ImageShardStream(expand_pattern(pattern), image_size=image_size, batch_size=batch_size, train=train,
                          seed=seed, rank=rank, world_size=world_size, random_flip=random_flip, crop=crop,
                          shuffle_buffer=shuffle_buffer, start_batch=start_batch)
    # The generator only keeps DataLoader from drawing its base seed from torch's global RNG
    # (which would shift the trainer's random state); our streams do not use that seed.
    return DataLoader(ds, batch_size=None, num_workers=num_workers, generator=torch.Generator().manual_seed(seed))
