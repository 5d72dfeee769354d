"""What ``rvq encode`` reads: a dataset cut into *units* of work, streamed as decoded batches.

A unit is one input shard, or (for a folder of images) ``per_shard`` consecutive files in
sorted order. For a video tokenizer the input is video shards (mp4), and each video becomes its
consecutive clips of ``frames`` frames at ``stride`` from its first frame (a tail shorter than a
clip is left out), each clip a sample keyed ``KEY_cNNN``. Units are the grain of everything that
must be exact: each unit becomes its own token shard(s), process r of W takes units r, r+W, ...,
data-loader workers split a process's units the same way, and a finished unit is never redone.
Images get the evaluation view (short side resized, centre crop): no augmentation, so the same
input always gives the same tokens.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys, tar_file_expander

from ..data.folders import class_layout, list_images, path_keys
from ..data.format import DataError, expand_pattern
from ..data.images import center_crop, center_crop_native, decode_rgb, sample_image, to_batch
from ..data.sources import resolve_data
from ..errors import describe


@dataclass
class Unit:
    index: int
    source: str  # the shard, or "FOLDER[first..last]" for a run of files
    files: list[tuple[str, str, int | None]] = field(default_factory=list)  # (path, key, label) for folders


@dataclass
class Source:
    description: str  # what was asked for, for manifests
    units: list[Unit]
    total: int | None  # samples, when known up front (folders)
    classes: dict[str, int] | None = None


def plan_source(data: str, per_shard: int, video: bool = False) -> Source:
    """Units of ``data``: "demo" (the demo training shards), a folder of images (class
    sub-folders give labels, as ``rvq data shards``), or a shard pattern. ``video``: video
    shards or the demo video set."""
    data = resolve_data(data, video=video, split="train")  # "demo": the demo training shards
    p = Path(os.path.expanduser(data))
    if p.is_dir() and not list(p.glob("*.tar")) and video:
        raise DataError(f"{p} is a folder; a video tokenizer encodes video shards (mp4 samples). Make them with "
                        "rvq data prepare bair|ucf101, or pass 'demo'.")
    if p.is_dir() and not list(p.glob("*.tar")):
        return _folder_source(p, per_shard)
    if p.is_dir():
        raise DataError(f"{p} is a folder of .tar files; name the shards with a pattern, e.g. {p}/*.tar, or give "
                        "a folder of images.")
    files = expand_pattern(data)
    return Source(data, [Unit(i, f) for i, f in enumerate(files)], None)


def _folder_source(folder: Path, per_shard: int) -> Source:
    rel = list_images(folder)
    if not rel:
        raise DataError(f"No image files under {folder}. Give a folder of images, a shard pattern, or 'demo'.")
    classes = class_layout(rel)
    labels = [classes[r.split("/", 1)[0]] if classes else None for r in rel]
    items = [(str(folder / r), k, c) for r, k, c in zip(rel, path_keys(rel), labels)]
    units = [Unit(i // per_shard, f"{folder}[{rel[i]}..{rel[min(i + per_shard, len(rel)) - 1]}]",
                  items[i : i + per_shard]) for i in range(0, len(items), per_shard)]
    return Source(str(folder), units, len(items), classes)


class _UnitErrors:
    def __init__(self):
        self.errors: list[tuple[str, str]] = []

    def __call__(self, exn: Exception) -> bool:
        self.errors.append(("(shard data)", describe(exn)))
        return True


def _shard_samples(url: str, errors: _UnitErrors) -> Iterator[tuple[str, dict]]:
    """(key, sample) of a shard; unreadable tar data is recorded and the rest of the shard kept."""
    try:
        stream = wds.gopen(url, "rb")
    except Exception as exn:
        errors(exn)
        return
    try:
        for s in group_by_keys(tar_file_expander([{"url": url, "stream": stream}], handler=errors), handler=errors):
            yield s["__key__"], s
    finally:
        stream.close()


def _clips(key: str, s: dict, size: int, clip: tuple[int, int]) -> Iterator[tuple[str, object, dict, object]]:
    """(KEY_cNNN, uint8 clip (T, S, S, 3), metadata, label) of each whole clip of a video sample."""
    import json

    from ..data.mp4 import clip_span, decode_clip, video_length
    from ..data.video import resize_center_crop, sample_video

    frames, stride = clip
    data = sample_video(s)
    meta = json.loads(s["json"]) if "json" in s else {}
    label = int(s["cls"]) if "cls" in s else None
    span = clip_span(frames, stride)
    n = video_length(data)
    if n < span:
        raise ValueError(f"video has {n} frames, a clip of {frames} frames at stride {stride} needs {span}")
    for j in range(n // span):
        c = resize_center_crop(decode_clip(data, frames=frames, stride=stride, start=j * span), size)
        yield f"{key}_c{j:03d}", c, {**meta, "video": key, "start": j * span, "stride": stride}, label


def _decoded(unit: Unit, size: int, errors: _UnitErrors, clip: tuple[int, int] | None = None,
             crop: str = "random") -> Iterator[tuple[str, object, dict, object]]:
    """(key, uint8 image or clip, metadata, label) of each decodable sample of ``unit``; images
    are the recipe's evaluation view (``crop``: "random" recipes resize the short side, then take
    the centre; "center" recipes take the stored image's centre)."""
    import json

    view = center_crop_native if crop == "center" else center_crop
    if clip is not None:
        for key, s in _shard_samples(unit.source, errors):
            try:
                yield from list(_clips(key, s, size, clip))  # all of a video's clips, or none of them
            except Exception as exn:
                errors.errors.append((key, describe(exn)))
        return
    if unit.files:
        for path, key, label in unit.files:
            try:
                im = view(decode_rgb(Path(path).read_bytes()), size)
            except Exception as exn:
                errors.errors.append((key, f"{path}: {describe(exn)}"))
                continue
            yield key, im, {"path": path}, label
        return
    for key, s in _shard_samples(unit.source, errors):
        try:
            im = view(sample_image(s), size)
            meta = json.loads(s["json"]) if "json" in s else {}
            label = int(s["cls"]) if "cls" in s else None
        except Exception as exn:
            errors.errors.append((key, describe(exn)))
            continue
        yield key, im, meta, label


class UnitStream(IterableDataset):
    """Batches ``{"unit", "x" (B,3,S,S) or clips (B,3,T,S,S) in [-1,1], or None, "key", "cls",
    "meta", "skipped", "end"}``; a batch never mixes units, and each unit's last batch has
    ``end=True`` (with its skipped samples as (key, reason) pairs)."""

    def __init__(self, units: list[Unit], image_size: int, batch_size: int, clip: tuple[int, int] | None = None,
                 crop: str = "random"):
        super().__init__()
        self.units, self.image_size, self.batch_size, self.clip, self.crop = units, image_size, batch_size, clip, crop

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        j, nw = (0, 1) if info is None else (info.id, info.num_workers)
        for unit in self.units[j::nw]:
            yield from self._unit(unit)

    def _unit(self, unit: Unit) -> Iterator[dict]:
        errors, rows = _UnitErrors(), []
        for row in _decoded(unit, self.image_size, errors, self.clip, self.crop):
            rows.append(row)
            if len(rows) == self.batch_size:
                yield self._batch(unit, rows, [], end=False)
                rows = []
        yield self._batch(unit, rows, errors.errors, end=True)

    def _batch(self, unit: Unit, rows: list, skipped: list, end: bool) -> dict:
        from ..data.video import to_video_batch

        keys, xs, metas, labels = (list(c) for c in zip(*rows)) if rows else ([], [], [], [])
        x = (to_video_batch(xs) if self.clip else to_batch(xs)) if xs else None
        return {"unit": unit.index, "x": x, "key": keys, "meta": metas, "cls": labels, "skipped": skipped, "end": end}


def unit_batches(units: list[Unit], image_size: int, batch_size: int, num_workers: int,
                 clip: tuple[int, int] | None = None, crop: str = "random") -> DataLoader:
    """Decoded batches of ``units`` from ``num_workers`` worker processes (0: this process);
    ``clip`` = (frames, stride) for a video tokenizer; ``crop``: the recipe's ``data.crop``."""
    workers = min(num_workers, len(units))
    return DataLoader(UnitStream(units, image_size, batch_size, clip, crop), batch_size=None, num_workers=workers,
                      generator=torch.Generator().manual_seed(0))
