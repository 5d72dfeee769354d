"""Figure helpers shared by the comparison reports (:mod:`.report` and :mod:`.synthetic_report`):
matplotlib's object API only (a Figure with its own Agg canvas), so drawing a report never
switches the backend of a notebook or a GUI that imported rvq. Clips are turned into frames for an
image grid by :func:`rvq_cli.grids.grid_frames`, which rvq eval's grid shares."""

from __future__ import annotations

from pathlib import Path

from ..files import atomic_path

__all__ = ["hide_ticks", "new_figure", "save_figure"]


def new_figure(rows: int, cols: int, figsize: tuple[float, float], **subplots):
    """A figure of rows × cols axes: (Figure, 2-D array of Axes)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    axes = fig.subplots(rows, cols, squeeze=False, **subplots)
    return fig, axes


def hide_ticks(ax) -> None:
    """No ticks on either axis: a panel of an image or a map, where coordinates say nothing."""
    ax.set_xticks([])
    ax.set_yticks([])


def save_figure(fig, path: Path, dpi: int = 80) -> Path:
    """Write ``fig`` to ``path`` as PNG, atomically (:func:`rvq_cli.files.atomic_path`)."""
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    return path
