"""A folder of images -> webdataset shards (what ``rvq data shards`` runs).

Layout rules (``folders.py``, as torchvision's ImageFolder):

- class folders: when ``src`` holds no images itself and its sub-folders do, each first-level
  sub-folder is a class; labels ``cls`` are 0..C-1 in sorted folder-name order (images deeper
  down belong to their first-level folder), and ``classes.json`` maps names to labels;
- otherwise the folder is unlabelled: every image found (recursively) is a sample without
  ``cls`` and ``classes.json`` is ``{}``.

Every sample carries ``json = {"path": relative path, "class": name (labelled only)}``. Files
are taken in sorted relative-path order; keys are the relative paths with ``/`` and ``.``
replaced by ``_`` (``cats/a.b.jpg`` -> ``cats_a_b_jpg``; a clash gets ``_2``, ``_3``, ...).
JPEG and PNG files are stored as their original bytes; other formats (WebP, BMP, GIF, TIFF, ...)
are converted to PNG. Files that do not decode are skipped and listed in the report and in
``out/skipped.txt`` (``path<TAB>reason`` per line).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..files import write_json_atomic, write_text_atomic
from .folders import IMAGE_SUFFIXES, SkippedFile, class_layout, list_images, load_image_file, path_keys
from .format import DataError, shard_pattern, shuffled_order, write_shards

_WINDOW = 1024  # files in flight at once (bounds memory with many workers)


@dataclass
class PrepareReport:
    """What ``folder_to_shards`` wrote."""

    out: Path
    pattern: str  # brace pattern of the shards, for data.train / data.val
    shards: list[Path]
    count: int  # samples written
    classes: Optional[dict[str, int]]  # None for an unlabelled folder
    converted: int  # files re-encoded as PNG (not JPEG/PNG originally)
    skipped: list[SkippedFile] = field(default_factory=list)


def _loaded(src: Path, paths: list[str], workers: int) -> Iterator[tuple[str, tuple[str, bytes] | str]]:
    full = [str(src / p) for p in paths]
    if workers <= 1:
        yield from zip(paths, map(load_image_file, full))
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for i in range(0, len(full), _WINDOW):
            yield from zip(paths[i : i + _WINDOW], pool.map(load_image_file, full[i : i + _WINDOW], chunksize=16))


def folder_to_shards(src: str | os.PathLike, out: str | os.PathLike, *, max_count: int = 1000,
                     workers: int = min(4, os.cpu_count() or 1), prefix: str = "shard") -> PrepareReport:
    """Convert the images under ``src`` into shards ``out/PREFIX-NNNNNN.tar`` (written
    atomically by ``write_shards``), ``out/classes.json`` and ``out/skipped.txt``.
    ``workers`` processes read and check the files (1: in this process)."""
    src, out = Path(src).expanduser(), Path(out).expanduser()
    if not src.is_dir():
        raise DataError(f"{src} is not a folder. `rvq data shards` takes a folder of images (optionally one "
                        "sub-folder per class) and writes webdataset shards.")
    paths = list_images(src)
    if not paths:
        raise DataError(f"No image files under {src} (looked for {', '.join(sorted(IMAGE_SUFFIXES))}).")
    classes = class_layout(paths)
    skipped: list[SkippedFile] = []
    counts = {"converted": 0}
    # keys from the sorted paths; the shards hold them in a fixed shuffled order (class folders mixed)
    keyed = shuffled_order(list(zip(path_keys(paths), paths)))
    order = [rel for _, rel in keyed]

    def samples() -> Iterator[dict]:
        for (key, _), (rel, got) in zip(keyed, _loaded(src, order, workers)):
            if isinstance(got, str):
                skipped.append(SkippedFile(rel, got))
                continue
            ext, data = got
            counts["converted"] += Path(rel).suffix.lower() not in (".jpg", ".jpeg", ".png")
            meta = {"path": rel}
            sample = {"__key__": key, ext: data, "json": meta}
            if classes is not None:
                meta["class"] = rel.split("/", 1)[0]
                sample["cls"] = classes[meta["class"]]
            yield sample

    try:
        shards = write_shards(samples(), out, prefix=prefix, max_count=max_count)
    except ValueError as err:
        if skipped and "no samples" in str(err):
            raise DataError(f"None of the {len(paths)} images under {src} could be decoded "
                            f"(e.g. {skipped[0].path}: {skipped[0].reason}).") from None
        raise
    write_json_atomic(out / "classes.json", classes or {})
    write_text_atomic(out / "skipped.txt", "".join(f"{s.path}\t{s.reason}\n" for s in skipped))
    return PrepareReport(out=out, pattern=shard_pattern(out, prefix, len(shards)), shards=shards,
                         count=len(paths) - len(skipped), classes=classes, converted=counts["converted"],
                         skipped=skipped)
