"""The visual report of ``rvq compare``: training curves, gradient diagnostics, codebook-usage
histograms and a reconstruction grid (PNG, matplotlib's Agg backend), and compare.md.

Every plotting function returns the figure's data as drawn, so tests can compare what is on
the page with what the runs logged.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

if TYPE_CHECKING:
    from .runner import CompareResult, EstimatorRun

__all__ = ["CURVES", "DIAGNOSTICS", "format_value", "plot_reconstructions", "plot_series", "plot_usage",
           "write_figures", "write_markdown"]

# (metric in metrics.jsonl, panel title, log scale)
CURVES = (("rec_loss", "train reconstruction loss", True), ("usage", "codebook usage per batch", False),
          ("quant_error", "quantization error", True), ("val_rec_loss", "reconstruction loss, 8 fixed val images", True))
DIAGNOSTICS = (("grad_cos", "cos(grad_e, g)", False), ("obtuse", "rows with angle(e, q) > 90°", False),
               ("fallbacks", "degenerate-row fallbacks per log", False))


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    """Write ``fig`` to ``path`` atomically (PNG) and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=80, bbox_inches="tight")
    os.replace(tmp, path)
    _plt().close(fig)
    return path


def plot_series(runs: list[EstimatorRun], panels, path: Path, title: str) -> dict[str, dict[str, tuple]]:
    """One panel per metric, one line per estimator (metric vs step); returns
    {metric: {estimator: (steps, values)}} as drawn."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    drawn: dict[str, dict[str, tuple]] = {}
    for ax, (key, label, log) in zip(axes[0], panels):
        drawn[key] = {}
        for run in runs:
            pts = [(r["step"], r[key]) for r in run.history if r.get(key) is not None]
            if not pts:
                continue
            steps, vals = zip(*pts)
            ax.plot(steps, vals, label=run.name, marker="o" if len(pts) < 4 else None, linewidth=1.4)
            drawn[key][run.name] = (steps, vals)
        if log and any(v > 0 for _, vs in drawn[key].values() for v in vs):
            ax.set_yscale("log")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    _save(fig, path)
    return drawn


def plot_usage(runs: list[EstimatorRun], path: Path) -> dict[str, np.ndarray]:
    """Per estimator, how often each code was chosen over the validation set, codes sorted from
    most to least used (log scale); returns the sorted counts as drawn."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 3.2), squeeze=False, sharey=True)
    drawn = {}
    for ax, run in zip(axes[0], runs):
        counts = np.sort(np.asarray(run.code_counts, dtype=np.int64))[::-1]
        drawn[run.name] = counts
        used = int((counts > 0).sum())
        if used:  # unused codes get no bar: the empty tail is the unused part of the codebook
            ax.bar(np.arange(used), counts[:used], width=1.0, color="tab:blue", linewidth=0)
            ax.set_yscale("log")
        ax.set_xlim(0, max(len(counts), 1))
        ax.set_title(f"{run.name}: {used} of {len(counts)} codes used", fontsize=10)
        ax.set_xlabel("code (sorted by use)")
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel("times chosen (validation set)")
    _save(fig, path)
    return drawn


def plot_reconstructions(images: torch.Tensor, runs: list[EstimatorRun], path: Path) -> dict[str, torch.Tensor]:
    """The same validation images (top row) reconstructed by each estimator's final checkpoint,
    one row per estimator, in eval mode; returns the reconstructions in [-1, 1]."""
    from ..evaluate import load_tokenizer

    from ..evaluate.evaluator import _grid_frames

    plt = _plt()
    recs = {}
    for run in runs:
        tok = load_tokenizer(run.run_dir)
        with torch.no_grad():
            recs[run.name] = tok.model(images.to(next(tok.model.parameters()).device)).reconstruction.float() \
                .clamp(-1, 1).cpu()
    if images.dim() == 5:  # clips: 4 evenly spaced frames of each, side by side
        images, recs = _grid_frames(images), {k: _grid_frames(v) for k, v in recs.items()}
    rows = [("original", images)] + list(recs.items())
    n = len(images)
    fig, axes = plt.subplots(len(rows), max(n, 1), figsize=(1.3 * max(n, 1), 1.4 * len(rows)), squeeze=False)
    for i, (label, batch) in enumerate(rows):
        for j in range(max(n, 1)):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < n:
                img = ((batch[j] + 1) / 2).clamp(0, 1).permute(1, 2, 0).numpy()
                ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None)
        axes[i][0].set_ylabel(label, fontsize=9, rotation=0, ha="right", va="center")
    fig.subplots_adjust(wspace=0.03, hspace=0.03)
    _save(fig, path)
    return recs


def write_figures(folder: Path, runs: list[EstimatorRun], images: torch.Tensor,
                  say: Callable[[str], None] = print) -> dict[str, Path]:
    out = {
        "curves": folder / "curves.png", "diagnostics": folder / "diagnostics.png",
        "usage": folder / "usage.png", "reconstructions": folder / "reconstructions.png",
    }
    plot_series(runs, CURVES, out["curves"], "training curves")
    plot_series(runs, DIAGNOSTICS, out["diagnostics"], "gradient diagnostics")
    plot_usage(runs, out["usage"])
    plot_reconstructions(images, runs, out["reconstructions"])
    return out


def format_value(v, fmt: str) -> str:
    return "—" if v is None else fmt.format(v)


def write_markdown(result: CompareResult, recipe_path, overrides) -> Path:
    from .runner import COLUMNS, TRAIN_WINDOW

    r = result.recipe
    cols = [c for c in COLUMNS if any(run.value(c.key) is not None for run in result.runs)]
    lines = [
        f"# rvq compare: {', '.join(run.name for run in result.runs)}",
        "",
        f"Recipe `{recipe_path}`" + (f" with `{' '.join(overrides)}`" if overrides else "") +
        f": {r.train.steps} steps, seed {r.train.seed}, batch {r.train.batch_size} × accumulation "
        f"{r.train.grad_accum}, {r.model.quantizer.codebook_size} codes of dimension "
        f"{r.model.quantizer.codebook_dim or r.model.quantizer.dim} ({r.model.quantizer.lookup}, "
        f"{r.model.quantizer.update}). Every run starts from the same weights "
        f"(fingerprint {result.runs[0].init_fingerprint}) and reads the same data in the same order; "
        "the estimator is the only difference.",
        "",
        f"Training columns: mean over the logs of the last {TRAIN_WINDOW:.0%} of the steps. Validation columns: "
        f"`rvq eval` on `{r.data.val}`. Best value per column in **bold**.",
        "",
        "| estimator | " + " | ".join(c.label for c in cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for run in result.runs:
        cells = []
        for c in cols:
            text = format_value(run.value(c.key), c.fmt)
            cells.append(f"**{text}**" if run.name in result.best.get(c.key, []) else text)
        lines.append(f"| {run.name} | " + " | ".join(cells) + " |")
    lines += ["", "![training curves](figures/curves.png)", "", "![gradient diagnostics](figures/diagnostics.png)",
              "", "![codebook usage](figures/usage.png)", "",
              "![reconstructions: originals on top, then one row per estimator](figures/reconstructions.png)", ""]
    if result.notes:
        lines += ["Notes:", ""] + [f"- {n}" for n in result.notes] + [""]
    lines += ["Runs: " + ", ".join(f"`{run.run_dir}` ({run.status})" for run in result.runs), ""]
    result.md_path.write_text("\n".join(lines))
    return result.md_path
