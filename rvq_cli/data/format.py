"""The shard format: webdataset tars, written atomically, named by brace patterns.

Shards are webdataset tars with one sample per image: ``KEY.png`` or ``KEY.jpg``, optional
``KEY.cls`` (an integer label) and ``KEY.json`` (metadata). Keys contain no dots. Video shards
hold ``KEY.mp4`` instead (``mp4.py``). This module writes them (``write_shards``; one tar at a
time: ``check_sample`` and ``write_tar``), names them (``shard_name``, ``shard_pattern``), expands
the patterns that name them (``expand_pattern``) and counts their samples (``count_samples``).
"""

from __future__ import annotations

import glob
import itertools
import os
import random
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import webdataset as wds

from ..errors import RvqError


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


def shard_name(prefix: str, i: int) -> str:
    """The file name of shard ``i`` of a set: ``PREFIX-00000i.tar`` (six digits or more)."""
    return f"{prefix}-{i:0{_SHARD_DIGITS}d}.tar"


def shard_pattern(out_dir: str | os.PathLike, prefix: str, count: int) -> str:
    """The brace pattern naming ``count`` shards written by ``write_shards`` (for recipes)."""
    last = shard_name(prefix, count - 1)[len(prefix) + 1 : -4]
    first = "0" * len(last)
    name = f"{prefix}-{first}.tar" if count == 1 else f"{prefix}-{{{first}..{last}}}.tar"
    return str(Path(out_dir) / name)


def check_sample(sample: dict, seen: set[str]) -> dict:
    """``sample``, validated for writing (key rules, field types); its key is added to ``seen``,
    the keys of the shard set so far, and a key already there is refused. Raises ValueError."""
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


def write_tar(path: Path, samples: Iterable[dict]) -> None:
    """Write ``samples`` (checked already) as one tar at ``path``, synced to disk. The same
    samples give the same bytes (fixed mtime); PAX headers allow long names."""
    with open(path, "wb") as f:
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
        while chunk := [check_sample(s, seen) for s in itertools.islice(it, max_count)]:
            names.append(shard_name(prefix, len(names)))
            write_tar(tmp / names[-1], chunk)
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
        what.append(f"{len(missing)} shard file{'' if one else 's'} {'does' if one else 'do'} not exist: "
                    f"{some(missing)}")
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
