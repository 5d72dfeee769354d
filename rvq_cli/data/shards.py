"""Image shards: writing them atomically, expanding shard patterns, and streaming batches.

Shards are webdataset tars with one sample per image: ``KEY.png`` or ``KEY.jpg``, optional
``KEY.cls`` (an integer label) and ``KEY.json`` (metadata). Keys contain no dots.

Streams (``image_batches``):

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

import glob
import hashlib
import itertools
import operator
import os
import random
import re
import shutil
import tempfile
import warnings
from abc import abstractmethod
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys, tar_file_expander

from ..errors import RvqError
from .images import center_crop, center_crop_native, random_crop, sample_image, to_batch


class DataError(RvqError):
    """Unusable data (missing shard files, nothing decodable): a one-paragraph message for users."""

    def __init__(self, message: str):
        # DataLoader re-raises a worker's exception in the main process as
        # DataError("Caught DataError in DataLoader worker process 0.\nOriginal Traceback ...");
        # keep just the original message, which is what the user needs.
        head, marker = message.partition("\n")[0], "DataError: "
        if head.startswith("Caught DataError") and marker in message:
            message = f"{message.rsplit(marker, 1)[1].strip()} ({head[len('Caught DataError '):].rstrip('.')})"
        super().__init__(message)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

_SHARD_DIGITS = 6


SHARD_ORDER_SEED = 0  # the fixed permutation training sets are written in ("shuffled-v1")


def shuffled_order(items: list) -> list:
    """``items`` in the fixed pseudo-random order training shards are written in: sorted folders
    (ImageNet's synsets, class sub-folders) would otherwise make every shard, and so every batch
    drawn from a few shards, nearly one class. Deterministic (a resumed job writes the same
    shards); the same for every run and machine."""
    out = list(items)
    random.Random(SHARD_ORDER_SEED).shuffle(out)
    return out


def _shard_name(prefix: str, i: int) -> str:
    return f"{prefix}-{i:0{_SHARD_DIGITS}d}.tar"


def shard_pattern(out_dir: str | os.PathLike, prefix: str, count: int) -> str:
    """The brace pattern naming ``count`` shards written by ``write_shards`` (for recipes)."""
    last = _shard_name(prefix, count - 1)[len(prefix) + 1 : -4]
    first = "0" * len(last)
    name = f"{prefix}-{first}.tar" if count == 1 else f"{prefix}-{{{first}..{last}}}.tar"
    return str(Path(out_dir) / name)


def _checked(sample: dict, seen: set[str]) -> dict:
    """Validate one sample for writing (key rules, field types)."""
    if not isinstance(sample, dict):
        raise ValueError(f"a sample is a dict of fields, got {type(sample).__name__}")
    key = sample.get("__key__")
    if not isinstance(key, str) or not key:
        raise ValueError(f"every sample needs a non-empty string '__key__', got {key!r}")
    if "." in key:
        raise ValueError(f"sample key {key!r} contains a dot; webdataset splits file names at the first dot, "
                         "so keys must not contain any (replace them, e.g. with '_')")
    if key in seen:
        raise ValueError(f"duplicate sample key {key!r}")
    seen.add(key)
    for field in ("png", "jpg"):
        if field in sample and not isinstance(sample[field], (bytes, bytearray, memoryview)):
            raise ValueError(f"sample {key!r}: '{field}' must be the encoded image bytes, "
                             f"got {type(sample[field]).__name__}")
    if "cls" in sample and (isinstance(sample["cls"], bool) or not isinstance(sample["cls"], int)):
        raise ValueError(f"sample {key!r}: 'cls' must be an int label, got {sample['cls']!r}")
    return sample


def _write_one(path: Path, samples: list[dict]) -> None:
    with open(path, "wb") as f:
        # mtime fixed so that the same samples give the same bytes; PAX allows long names.
        with wds.TarWriter(f, mtime=0, format="PAX_FORMAT") as tar:
            for s in samples:
                tar.write(s)
        f.flush()
        os.fsync(f.fileno())


def write_shards(samples: Iterable[dict], out_dir: str | os.PathLike, prefix: str = "shard",
                 max_count: int = 1000) -> list[Path]:
    """Write ``samples`` as webdataset shards ``out_dir/PREFIX-000000.tar``, ... of at most
    ``max_count`` samples each; return their paths.

    A sample is ``{"__key__": str without dots, "png" or "jpg": bytes, "cls": int (optional),
    "json": dict (optional)}``; other fields are encoded by webdataset's usual extension rules.

    Atomic per run: shards are written into a hidden temporary folder inside ``out_dir`` and
    moved to their final names (``os.replace``, same file system) only once every sample has
    been written. If anything fails (an exception from ``samples``, a bad key, a full disk),
    the temporary folder is removed and ``out_dir`` is untouched: no truncated ``.tar`` under a
    final name, and shards of an earlier complete run stay as they were. A successful run
    replaces an earlier run's ``PREFIX-NNNNNN.tar`` files and removes those beyond its own count.
    (Only a crash during the final renames, which take milliseconds, could leave a mix of
    complete old and new shards; a hard kill before that leaves a ``.PREFIX-partial-*`` folder,
    which is safe to delete.)
    """
    if max_count < 1:
        raise ValueError(f"max_count must be at least 1, got {max_count}")
    if not prefix or "/" in prefix or os.sep in prefix or prefix.startswith("."):
        raise ValueError(f"prefix must be a plain file-name prefix, got {prefix!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{prefix}-partial-", dir=out))
    try:
        names, seen, it = [], set(), iter(samples)
        while chunk := [_checked(s, seen) for s in itertools.islice(it, max_count)]:
            names.append(_shard_name(prefix, len(names)))
            _write_one(tmp / names[-1], chunk)
        if not names:
            raise ValueError(f"no samples to write to {out}")
        for name in names:
            os.replace(tmp / name, out / name)
        stale = re.compile(rf"{re.escape(prefix)}-\d{{{_SHARD_DIGITS},}}\.tar")
        for p in out.iterdir():
            if stale.fullmatch(p.name) and p.name not in names:
                p.unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [out / n for n in names]


# --------------------------------------------------------------------------------------------
# Patterns
# --------------------------------------------------------------------------------------------


def _is_url(s: str) -> bool:
    return "://" in s or s.startswith("pipe:")


def expand_pattern(pattern: str | os.PathLike) -> list[str]:
    """Shard files named by ``pattern``: brace ranges (``data/train-{000000..000099}.tar``),
    then globs (``data/*.tar``), in that order; URLs (``s3://``, ``pipe:``) are kept as they are.
    Raises DataError naming every missing file."""
    import braceexpand  # installed with webdataset

    pattern = os.path.expanduser(os.fspath(pattern))
    if not pattern.strip():
        raise DataError("The shard pattern is empty. Name webdataset .tar shards, "
                        "e.g. data/train-{000000..000009}.tar.")
    files, missing, dirs = [], [], []
    for part in braceexpand.braceexpand(pattern):
        if _is_url(part):
            files.append(part)
        elif any(c in part for c in "*?["):
            found = sorted(f for f in glob.glob(part) if os.path.isfile(f))
            files += found
            missing += [] if found else [part]
        elif os.path.isfile(part):
            files.append(part)
        else:
            (dirs if os.path.isdir(part) else missing).append(part)
    if missing or dirs:
        raise DataError(_missing_message(pattern, missing, dirs))
    return files


def _missing_message(pattern: str, missing: list[str], dirs: list[str]) -> str:
    def some(xs: list[str]) -> str:
        more = f" and {len(xs) - 5} more" if len(xs) > 5 else ""
        return ", ".join(xs[:5]) + more

    what = []
    if missing:
        one = len(missing) == 1
        what.append(f"{len(missing)} shard file{'' if one else 's'} {'does' if one else 'do'} not exist: {some(missing)}")
    if dirs:
        are = "is a folder" if len(dirs) == 1 else "are folders"
        what.append(f"{some(dirs)} {are}, not a shard (use FOLDER/*.tar)")
    return (f"Shard pattern {pattern!r}: {'; '.join(what)}. Create shards from a folder of images with "
            "`rvq data shards FOLDER OUT` (a downloaded dataset, videos included: `rvq data prepare`), point the "
            "pattern at existing .tar files "
            "(brace ranges like data/train-{000000..000009}.tar and globs like data/*.tar both work), "
            "or train on the built-in demo photographs with data.train=demo.")


def count_samples(files: list[str]) -> int | None:
    """Samples (distinct keys) in local tar shards, read from the tar headers only (the data is
    skipped, not read); None when a shard is a URL or cannot be listed. For progress bars."""
    import tarfile

    total = 0
    for f in files:
        if _is_url(f):
            return None
        try:
            with tarfile.open(f, "r:") as tar:
                last = None
                for m in tar:
                    if not m.isfile():
                        continue
                    folder, _, base = m.name.rpartition("/")
                    key = (folder, base.split(".", 1)[0])  # webdataset's key: the name up to the first dot
                    total += key != last
                    last = key
        except (OSError, tarfile.TarError):
            return None
    return total


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

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
        warnings.warn(f"rvq: skipping unreadable shard data: {exn}", stacklevel=2)
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
                                    f"{sample.get('__key__')!r} in {sample.get('__url__')}: {exn}). {self.hint}") from None
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
    ``demo_shards``), for process ``rank`` of ``world_size``.

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
    for name, v, lo in (("image_size", image_size, 1), ("batch_size", batch_size, 1), ("world_size", world_size, 1),
                        ("num_workers", num_workers, 0), ("shuffle_buffer", shuffle_buffer, 0),
                        ("start_batch", start_batch, 0)):
        if not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an integer ≥ {lo}, got {v!r}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in 0..{world_size - 1} for world_size {world_size}, got {rank}")
    if crop not in ("random", "center"):
        raise ValueError(f"crop must be 'random' or 'center', got {crop!r}")
    if start_batch and not train:
        raise ValueError("start_batch resumes a training stream; a validation pass always starts at the beginning")
    if os.fspath(pattern) == "demo":  # config.DEMO: the built-in demo shards (default cache)
        from .demo import demo_shards

        d = demo_shards()
        pattern = d.train if train else d.val
    seed, rank = operator.index(seed), operator.index(rank)  # plain ints: seeds are hashed from their repr
    ds = ImageShardStream(expand_pattern(pattern), image_size=image_size, batch_size=batch_size, train=train,
                          seed=seed, rank=rank, world_size=world_size, random_flip=random_flip, crop=crop,
                          shuffle_buffer=shuffle_buffer, start_batch=start_batch)
    # The generator only keeps DataLoader from drawing its base seed from torch's global RNG
    # (which would shift the trainer's random state); our streams do not use that seed.
    return DataLoader(ds, batch_size=None, num_workers=num_workers, generator=torch.Generator().manual_seed(seed))
