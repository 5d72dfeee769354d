"""Folders of image files, as ``rvq data shards``, ``rvq data prepare`` and ``rvq encode`` read them.

Layout rules (as torchvision's ImageFolder):

- class folders: when the folder holds no images itself and its sub-folders do, each first-level
  sub-folder is a class; labels are 0..C-1 in sorted folder-name order (images deeper down
  belong to their first-level folder): ``class_layout``;
- otherwise the folder is unlabelled.

Files are listed in sorted relative-path order (``list_images``); keys are the relative paths
with ``/`` and ``.`` replaced by ``_`` (``cats/a.b.jpg`` -> ``cats_a_b_jpg``; a clash gets
``_2``, ``_3``, ...): ``path_keys``. ``load_image_file`` reads one file as the bytes to store.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from PIL import Image

from ..errors import describe
from .images import decode_rgb

IMAGE_SUFFIXES = frozenset(".jpg .jpeg .png .webp .bmp .gif .tif .tiff .ppm .pgm .pbm".split())


@dataclass(frozen=True)
class SkippedFile:
    """A source file that was left out of the shards, and why."""

    path: str  # relative to the source folder
    reason: str


def list_images(src: Path) -> list[str]:
    """Relative POSIX paths of image files under ``src`` (hidden files and folders excluded), sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for f in filenames:
            if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES:
                found.append(Path(dirpath, f).relative_to(src).as_posix())
    return sorted(found)


def load_image_file(path: str) -> tuple[str, bytes] | str:
    """(field, bytes) ready to store, or the reason the file is unusable. JPEG and PNG files keep
    their bytes; other formats (the first frame of animations) are re-encoded as PNG. Runs in
    worker processes."""
    try:
        data = Path(path).read_bytes()
        decode_rgb(data)  # the same decoding the training stream uses
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format
            if fmt in ("JPEG", "PNG"):
                return ("jpg" if fmt == "JPEG" else "png"), data
            im.seek(0)  # first frame of animations
            im.load()
            if im.mode not in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I"):
                im = im.convert("RGBA" if "A" in im.mode else "RGB")
            buf = io.BytesIO()
            im.save(buf, format="PNG")
            return "png", buf.getvalue()
    except Exception as exn:  # anything PIL or the OS raises for this file
        return describe(exn)


def path_keys(paths: list[str]) -> list[str]:
    """Sample keys of relative paths: ``/`` and ``.`` replaced by ``_``, a clash suffixed ``_2``, ``_3``, ..."""
    keys, used = [], set()
    for p in paths:
        base = p.replace("/", "_").replace(".", "_")
        key, i = base, 1
        while key in used:
            i += 1
            key = f"{base}_{i}"
        used.add(key)
        keys.append(key)
    return keys


def class_layout(paths: list[str]) -> Optional[dict[str, int]]:
    """Class name -> label when every image sits inside a first-level sub-folder, else None."""
    if not paths or any("/" not in p for p in paths):
        return None
    return {name: i for i, name in enumerate(sorted({p.split("/", 1)[0] for p in paths}))}
