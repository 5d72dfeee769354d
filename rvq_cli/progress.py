"""Progress of a batch job (eval, encode, decode): a rich bar with images/s, or nothing."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class JobProgress:
    """``with JobProgress("encode", total) as p: p.advance(n_images)``; ``total`` may be None
    (unknown length: a pulsing bar). ``silent`` (other ranks, --quiet) shows nothing."""

    def __init__(self, label: str, total: int | None, unit: str = "images", silent: bool = False):
        self.label, self.total, self.unit, self.silent = label, total, unit, silent
        self.done, self._t0 = 0, time.perf_counter()
        self.bar = None if silent else Progress(
            TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=False,
        )
        self.task = None

    def __enter__(self) -> JobProgress:
        self._t0 = time.perf_counter()
        if self.bar is not None:
            self.bar.__enter__()
            self.task = self.bar.add_task(self.label, total=self.total, info="")
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    @property
    def rate(self) -> float:
        """Items per second since the start."""
        return self.done / max(time.perf_counter() - self._t0, 1e-9)

    def advance(self, n: int, info: str = "") -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(self.task, advance=n, info=f"{self.rate:.1f} {self.unit}/s {info}".rstrip())

    def print(self, message: str) -> None:
        if self.bar is not None:
            self.bar.console.print(message, highlight=False, markup=False)
