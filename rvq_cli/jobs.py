"""Resumable jobs that write into an output folder (``rvq encode``, ``rvq data prepare``): a
record of the job's settings pins what may continue there, and only the job's own files are
ever removed (``--restart``)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path


def job_differences(record: Path, job: dict, defaults: dict | None = None) -> list[str] | None:
    """None when ``record`` does not exist; else how ``job`` differs from it ([] for the same job).
    A key the record lacks counts as its value in ``defaults`` where given: a setting added to rvq
    after the record was written, whose default is what ran before."""
    if not record.is_file():
        return None
    try:
        old = json.loads(record.read_text())
    except ValueError:
        old = {}
    old = {**(defaults or {}), **old}
    return [f"{k}: {old.get(k)!r} before, {v!r} now" for k, v in job.items() if old.get(k) != v]


def clear_outputs(out: Path, progress_dir: Path, is_ours: Callable[[str], bool]) -> None:
    """Remove an earlier job's progress folder and the files of ``out`` that ``is_ours`` names."""
    shutil.rmtree(progress_dir, ignore_errors=True)
    for p in out.iterdir():
        if is_ours(p.name):
            p.unlink()
