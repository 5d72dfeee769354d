"""Writing files so that a reader (or a crash) never sees half of one: every file rvq writes goes
through :func:`atomic_path`, a private temporary in the destination's folder renamed over the
destination when complete, removed when writing fails."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "user_cache", "write_bytes_atomic", "write_json_atomic", "write_text_atomic"]


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside ``path`` (hidden, unique to this call, ending in ``suffix`` so that
    writers which infer a format from the name still can); when the block ends without an error
    it is renamed over ``path`` (atomic on one file system), otherwise removed. The folder is
    created if missing; the file gets the usual 0644 permissions, not mkstemp's private ones."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def user_cache(app: str) -> Path:
    """``$XDG_CACHE_HOME/<app>`` (the XDG base directory spec), else ``~/.cache/<app>``."""
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base).expanduser() if base else Path.home() / ".cache") / app


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _strict(obj):
    """``obj`` with every non-finite float replaced by None: strict JSON (NaN is not JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    return obj


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    """``obj`` as strict JSON (non-finite numbers as null), indented, atomically."""
    write_text_atomic(path, json.dumps(_strict(obj), indent=1, allow_nan=False) + "\n")
