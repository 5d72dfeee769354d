"""Figure helpers shared by the comparison reports: matplotlib's object API only (a Figure with
its own Agg canvas), so drawing a report never switches the backend of a notebook or a GUI that
imported rvq."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["new_figure", "save_figure"]


def new_figure(rows: int, cols: int, figsize: tuple[float, float], **subplots):
    """A figure of rows × cols axes: (Figure, 2-D array of Axes)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    axes = fig.subplots(rows, cols, squeeze=False, **subplots)
    return fig, axes


def save_figure(fig, path: Path, dpi: int = 80) -> Path:
    """Write ``fig`` to ``path`` as PNG atomically: a temporary name unique to this process, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    os.replace(tmp, path)
    return path
