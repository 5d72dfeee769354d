"""Resumable jobs that write into an output folder (``rvq encode``, ``rvq data prepare``): a
record of the job's settings pins what may continue there, and only the job's own files are
ever removed (``--restart``)."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def job_differences(record: Path, job: dict) -> list[str] | None:
    """None when ``record`` does not exist; else how ``job`` differs from it ([] for the same job)."""
    if not record.is_file():
        return None
    try:
        old = json.loads(record.read_text())
    except ValueError:
        old = {}
    return [f"{k}: {old.get(k)!r} before, {v!r} now" for k, v in job.items() if old.get(k) != v]


def clear_outputs(out: Path, progress_dir: Path, is_ours: Callable[[str], bool]) -> None:
    """Remove an earlier job's progress folder and the files of ``out`` that ``is_ours`` names."""
    shutil.rmtree(progress_dir, ignore_errors=True)
    for p in out.iterdir():
        if is_ours(p.name):
            p.unlink()


def _strict(obj):
    """``obj`` with every non-finite float replaced by None: strict JSON (NaN is not JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    return obj


def write_json_atomic(path: Path, obj: dict) -> None:
    """Write ``obj`` as strict JSON (non-finite numbers as null) through a temporary file of its
    own in the same folder, then rename: readers see the old file or the new one, never a part,
    and two writers never share a temporary file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o644)  # mkstemp's file is private; the result is not
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(_strict(obj), indent=1, allow_nan=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
