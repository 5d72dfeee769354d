"""Figure helpers shared by the comparison reports: matplotlib's object API only (a Figure with
its own Agg canvas), so drawing a report never switches the backend of a notebook or a GUI that
imported rvq."""

from __future__ import annotations

from pathlib import Path

from ..files import atomic_path

__all__ = ["new_figure", "save_figure"]


def new_figure(rows: int, cols: int, figsize: tuple[float, float], **subplots):
    """A figure of rows × cols axes: (Figure, 2-D array of Axes)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    axes = fig.subplots(rows, cols, squeeze=False, **subplots)
    return fig, axes


def save_figure(fig, path: Path, dpi: int = 80) -> Path:
    """Write ``fig`` to ``path`` as PNG, atomically (:func:`rvq_cli.files.atomic_path`)."""
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    return path
