"""Training progress on the terminal: a rich progress bar, or plain log lines (quiet mode)."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def format_metrics(m: dict, unit: str = "img") -> str:
    """One log line; ``unit`` names what ``images_per_s`` counts ("img", or "clip" for video)."""
    parts = [f"step {m['step']}", f"loss {m['loss']:.4f}", f"rec {m['rec_loss']:.4f}", f"usage {m['usage']:.1%}",
             f"perplexity {m['perplexity']:.1f}", f"qerr {m['quant_error']:.2e}", f"lr {m['lr']:.2e}",
             f"{m['images_per_s']:.1f} {unit}/s"]
    if "grad_cos" in m:
        parts.append(f"cos(∇e,g) {m['grad_cos']:.3f}  obtuse {m.get('obtuse', 0.0):.1%}")
    if "perceptual" in m:
        parts.append(f"lpips {m['perceptual']:.4f}")
    if "d_loss" in m:
        parts.append(f"g {m['g_loss']:.3f} d {m['d_loss']:.3f} λ {m['adaptive_weight']:.3g}")
    if "val_rec_loss" in m:
        parts.append(f"val rec {m['val_rec_loss']:.4f}")
    if m.get("fallbacks"):
        parts.append(f"fallbacks {int(m['fallbacks'])}")
    if m.get("skipped"):
        parts.append(f"skipped samples {int(m['skipped'])}")
    return "  ".join(parts)


class TrainProgress:
    """``with TrainProgress(total, start): ... advance(metrics) ... log(averaged_metrics)``."""

    def __init__(self, total: int, start: int = 0, quiet: bool = False, silent: bool = False, unit: str = "img"):
        self.quiet, self.silent, self.unit = quiet, silent, unit
        self.console = Console()
        self._last_time, self._rate = None, None
        self.bar = None if quiet or silent else Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=False,
        )
        self.total, self.start = total, start
        self.task = None

    def __enter__(self):
        if self.bar is not None:
            self.bar.__enter__()
            self.task = self.bar.add_task("train", total=self.total, completed=self.start, info="")
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def advance(self, m: dict) -> None:
        now = time.perf_counter()
        if self._last_time is not None:
            rate = 1.0 / max(now - self._last_time, 1e-9)
            self._rate = rate if self._rate is None else 0.9 * self._rate + 0.1 * rate
        self._last_time = now
        if self.bar is not None:
            speed = f" {self._rate:.2f} it/s" if self._rate else ""
            info = f"loss {m['loss']:.4f} usage {m['usage']:.0%} qerr {m['quant_error']:.1e}{speed}"
            self.bar.update(self.task, advance=1, info=info)

    def warn(self, message: str) -> None:
        if self.silent:
            return
        if self.bar is not None:
            self.bar.console.print(f"[yellow]warning:[/] {message}", highlight=False, markup=True)
        else:
            print(f"warning: {message}", flush=True)

    def log(self, m: dict) -> None:
        """A line per log interval: printed above the bar, or alone in quiet mode."""
        if self.silent:
            return
        line = format_metrics(m, self.unit)
        if self.bar is not None:
            self.bar.console.print(line, highlight=False)
        else:
            print(line, flush=True)
