"""The resumable, deterministic shard writer of ``rvq data prepare``: a layout's ``Plan`` -> shards.

Split S is written as ``OUT/S-000000.tar``, ... with ``per_shard`` items each, in the plan's
order (``prepare_dataset`` puts training items in ``shuffled_order``). Each shard is written to a
hidden ``.partial`` file and renamed when complete, then recorded in ``OUT/.progress/S-NNNNNN.json``
(its files, a digest of what it holds, its size, skipped files). A re-run skips recorded shards,
so an interrupted run continues where it stopped; ``OUT/.progress/job.json`` pins source and
settings, and other ones are refused unless ``restart``. Corrupt files are skipped and listed in
``OUT/skipped.txt``. Images are stored as they are, or (``size``) downscaled to that short side
as JPEG; videos (frame folders, video files) as mp4 (``video_layouts.read_video_item``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import option
from ..files import write_json_atomic, write_text_atomic
from ..jobs import clear_outputs, job_differences
from ..progress import JobProgress
from .folders import SkippedFile, load_image_file
from .format import DataError, check_sample, shard_name, shard_pattern, write_tar
from .images import decode_rgb, resize_short
from .layouts import DatasetOptions, Item, Plan
from .video_layouts import read_video_item

PROGRESS = ".progress"
JPEG_QUALITY = 95  # --size: downscaled images are stored as JPEG at this quality
_OURS = re.compile(r"(train|val)-\d{6,}\.tar")
_PARTIAL = re.compile(r"\.(train|val)-\d{6,}\.tar\.partial")  # a shard being written (_write_shard)


@dataclass
class SplitReport:
    """The shards of one split."""

    pattern: str  # brace pattern of the shards, for data.train / data.val
    shards: list[Path]
    count: int  # samples in the shards
    written_now: int  # samples written by this run


@dataclass
class DatasetReport:
    """What ``prepare_dataset`` wrote."""

    out: Path
    layout: str
    splits: dict[str, SplitReport]
    classes: Optional[dict[str, int]]
    skipped: list[SkippedFile]
    notes: list[str]
    images_per_s: float


@dataclass(frozen=True)
class _Chunk:
    """The items of one shard: shard ``index`` of ``split``."""

    split: str
    index: int
    items: list[Item]

    @property
    def name(self) -> str:
        return shard_name(self.split, self.index)

    def digest(self) -> str:
        rows = [[it.path, it.key, it.cls, it.meta] for it in self.items]
        return hashlib.blake2b(json.dumps(rows).encode(), digest_size=16).hexdigest()


def _record_path(out: Path, name: str) -> Path:
    return out / PROGRESS / f"{name[:-4]}.json"


def _record(out: Path, chunk: _Chunk) -> Optional[dict]:
    """The record of ``chunk``'s shard when that shard is complete and holds what ``chunk`` says, else None."""
    try:
        rec = json.loads(_record_path(out, chunk.name).read_text())
        size = (out / chunk.name).stat().st_size
    except (OSError, ValueError):
        return None
    return rec if rec.get("items") == chunk.digest() and rec.get("bytes") == size else None


def _read(job: tuple[str, Optional[int]]) -> tuple[str, bytes] | str:
    """(field, bytes) to store, or why the file is unusable. With ``size``, images whose short side
    is larger are downscaled to it and stored as JPEG; others keep their bytes. Runs in workers."""
    path, size = job
    if size is not None:
        try:
            im = decode_rgb(Path(path).read_bytes())
            if min(im.size) > size:
                buf = io.BytesIO()
                resize_short(im, size).save(buf, format="JPEG", quality=JPEG_QUALITY)
                return "jpg", buf.getvalue()
        except Exception:  # unusable: load_image_file says why
            pass
    got = load_image_file(path)
    if isinstance(got, str):  # PIL names its buffer (<_io.BytesIO object at 0x...>): keep reasons reproducible
        return re.sub(r" ?<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", got)
    return got


def _write_shard(path: Path, samples: Iterator[dict]) -> int:
    """Write one shard atomically (a hidden ``.partial`` file renamed when complete); return its sample count."""
    tmp, seen = path.with_name(f".{path.name}.partial"), set()
    try:
        write_tar(tmp, (check_sample(s, seen) for s in samples))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return len(seen)


def _write_chunk(src: Path, out: Path, chunk: _Chunk, pool, size: Optional[int], progress: JobProgress,
                 reader: str = "image") -> dict:
    if reader == "image":
        read, jobs = _read, [(str(src / it.path), size) for it in chunk.items]
    else:  # videos: a folder of frames or a video file, written as mp4
        read, jobs = read_video_item, [(reader, str(src / it.path), size) for it in chunk.items]
    results = map(read, jobs) if pool is None else pool.map(read, jobs, chunksize=1 if reader != "image" else 8)
    skipped = []

    def samples() -> Iterator[dict]:
        for it, got in zip(chunk.items, results):
            progress.advance(1)
            if isinstance(got, str):
                skipped.append([it.path, got])
                continue
            extra = got[2] if len(got) > 2 else {}  # videos: frames, fps, size
            sample = {"__key__": it.key, got[0]: got[1], "json": {"path": it.path, **it.meta, **extra}}
            if it.cls is not None:
                sample["cls"] = it.cls
            yield sample

    count = _write_shard(out / chunk.name, samples())
    rec = {"shard": chunk.name, "items": chunk.digest(), "bytes": (out / chunk.name).stat().st_size, "count": count,
           "files": [it.path for it in chunk.items], "skipped": skipped}
    write_json_atomic(_record_path(out, chunk.name), rec)
    return rec


@contextlib.contextmanager
def _pool(workers: int):
    if workers <= 1:
        yield None
        return
    pool = ProcessPoolExecutor(max_workers=workers)
    try:
        pool.submit(int).result()  # fork the workers now, before the progress bar starts its thread
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # Ctrl-C: do not read the rest of the shard first


def _ours(name: str) -> bool:
    return bool(_OURS.fullmatch(name) or _PARTIAL.fullmatch(name)) or name in ("classes.json", "skipped.txt")


def _check_job(out: Path, job: dict, restart: bool) -> None:
    """Start, continue, or refuse: ``out`` may only hold the same job's shards."""
    path = out / PROGRESS / "job.json"
    if restart and out.is_dir():
        clear_outputs(out, out / PROGRESS, _ours)
    diff = job_differences(path, job)
    if diff:
        raise DataError(f"{out} holds shards prepared from another source or with other settings "
                        f"({'; '.join(diff)}). Re-run with the same ones to continue, pass "
                        f"{option('restart')} to replace them, or choose another OUT.")
    if diff is None and out.is_dir() and any(_OURS.fullmatch(p.name) for p in out.iterdir()):
        raise DataError(f"{out} already holds train-/val- shards without a record of how they were made. Pass "
                        f"{option('restart')} to replace them, or choose another OUT.")
    (out / PROGRESS).mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, job)


def _remove_stale(out: Path, chunks: list[_Chunk]) -> None:
    """Shards (and records) of this job's splits beyond their current count: the source shrank."""
    ours = {c.name for c in chunks}
    for p in out.iterdir():
        if _OURS.fullmatch(p.name) and p.name not in ours:
            p.unlink()
            _record_path(out, p.name).unlink(missing_ok=True)


def _finish(out: Path, layout: str, plan: Plan, chunks: list[_Chunk], written: dict[str, int],
            rate: float) -> DatasetReport:
    counts: dict[str, int] = {}
    shards: dict[str, list[Path]] = {}
    skipped: dict[str, list[SkippedFile]] = {}
    for c in chunks:
        rec = json.loads(_record_path(out, c.name).read_text())
        counts[c.split] = counts.get(c.split, 0) + rec["count"]
        shards.setdefault(c.split, []).append(out / c.name)
        skipped.setdefault(c.split, []).extend(SkippedFile(*s) for s in rec["skipped"])
    every = [s for split in skipped.values() for s in split]
    write_json_atomic(out / "classes.json", plan.classes or {})
    write_text_atomic(out / "skipped.txt", "".join(f"{s.path}\t{s.reason}\n" for s in every))
    for split, n in counts.items():
        if n == 0:
            first = skipped[split][0]
            raise DataError(f"None of the {len(plan.splits[split])} {split} images could be decoded (e.g. "
                            f"{first.path}: {first.reason}); all are listed in {out / 'skipped.txt'}.")
    reports = {s: SplitReport(shard_pattern(out, s, len(shards[s])), shards[s], counts[s], written.get(s, 0))
               for s in shards}
    return DatasetReport(out, layout, reports, plan.classes, every, plan.notes, rate)




def write_plan(src: Path, out: Path, layout: str, plan: Plan, job: dict, o: DatasetOptions) -> DatasetReport:
    """Write ``plan``'s splits (items under ``src``) into ``out`` as ``SPLIT-NNNNNN.tar`` shards of
    ``o.per_shard`` items, ``classes.json`` and ``skipped.txt``; see the module docstring. ``job``
    (source and settings) is pinned in ``out/.progress/job.json``: the same job continues where it
    stopped, another is refused unless ``o.restart``. ``o.workers`` processes read the files."""
    _check_job(out, job, o.restart)
    chunks = [_Chunk(s, i // o.per_shard, items[i : i + o.per_shard])
              for s, items in plan.splits.items() for i in range(0, len(items), o.per_shard)]
    todo = [c for c in chunks if _record(out, c) is None]
    written: dict[str, int] = {}
    with _pool(o.workers if todo else 1) as pool, \
            JobProgress(f"prepare {layout}", sum(len(c.items) for c in todo), silent=o.quiet) as progress:
        for c in todo:
            written[c.split] = written.get(c.split, 0) + _write_chunk(src, out, c, pool, o.size, progress,
                                                                      plan.reader)["count"]
        rate = progress.rate
    _remove_stale(out, chunks)
    return _finish(out, layout, plan, chunks, written, rate)
