"""The report of ``rvq compare``: the tables (over seeds, seed-paired differences, per seed) as
:class:`.tables.Table` rows that the CLI and compare.md render alike, and the figures: training
curves with the seed spread, gradient diagnostics, codebook-usage histograms and a reconstruction
grid (PNG). It reads a :class:`.results.CompareResult`; the runner makes one.

Every plotting function returns the figure's data as drawn, so tests can compare what is on
the page with what the runs logged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from .plotting import hide_ticks, new_figure, save_figure
from .results import COLUMNS, TRAIN_WINDOW, CompareResult, EstimatorRun
from .stats import LEVEL
from .tables import Cell, Table

__all__ = ["CURVES", "DIAGNOSTICS", "Cell", "Table", "console_tables", "difference_table", "format_value",
           "plot_reconstructions", "plot_series", "plot_usage", "seed_table", "summary_table", "write_figures",
           "write_markdown"]

# (metric in metrics.jsonl, panel title, log scale)
CURVES = (("rec_loss", "train reconstruction loss", True), ("usage", "codebook usage per batch", False),
          ("quant_error", "quantization error", True),
          ("val_rec_loss", "reconstruction loss, 8 fixed val images", True))
DIAGNOSTICS = (("grad_cos", "cos(grad_e, g)", False), ("obtuse", "rows with angle(e, q) > 90°", False),
               ("fallbacks", "degenerate-row fallbacks per log", False))


# --------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------


def format_value(v, fmt: str) -> str:
    return "—" if v is None else fmt.format(v)


def _signed(v: float, fmt: str) -> str:
    text = fmt.format(v)
    return text if text.startswith("-") else "+" + text


def _columns(table: dict) -> list:
    """The columns that any estimator has a value for in ``table`` (estimator -> column -> value)."""
    return [c for c in COLUMNS if any(c.key in per for per in table.values())]


def summary_table(result: CompareResult) -> Table:
    """One row per estimator: the mean ± std over seeds of every column (the value itself for
    one seed); ``mark`` on the best, as :func:`.results.best_values` decides."""
    cols = _columns(result.summary)
    rows = []
    for name in result.estimators:
        cells = [Cell(name)]
        for c in cols:
            s = result.summary[name].get(c.key)
            text = "—" if s is None else c.fmt.format(s.mean) + ("" if s.std is None else " ± " + c.fmt.format(s.std))
            cells.append(Cell(text, name in result.best.get(c.key, [])))
        rows.append(cells)
    n = len(result.seeds)
    title = f"mean ± std over {n} seeds" if n > 1 else f"seed {result.seeds[0]}"
    return Table(title, ["method"] + [c.label for c in cols], rows, marks="best")


def difference_table(result: CompareResult) -> Table | None:
    """One row per estimator after the first: the seed-paired difference to the first with its
    interval, ``mark`` where the interval excludes zero; None with fewer than two seeds."""
    if len(result.seeds) < 2 or len(result.estimators) < 2:
        return None
    cols = _columns(result.differences)
    rows = []
    for name in result.estimators[1:]:
        cells = [Cell(f"{name} − {result.baseline}")]
        for c in cols:
            d = result.differences[name].get(c.key)
            if d is None:
                cells.append(Cell("—"))
                continue
            cells.append(Cell(f"{_signed(d.mean, c.fmt)} [{_signed(d.low, c.fmt)}, {_signed(d.high, c.fmt)}]",
                              d.excludes_zero))
        rows.append(cells)
    title = (f"seed-paired difference to {result.baseline}: mean [{LEVEL:.0%} interval] over "
             f"{len(result.seeds)} seeds")
    return Table(title, ["difference"] + [c.label for c in cols], rows, marks="interval excludes 0")


def seed_table(result: CompareResult) -> Table:
    """One row per run (estimator and seed): the column values of that seed alone."""
    cols = [c for c in COLUMNS if any(r.value(c.key) is not None for r in result.runs)]
    rows = [[Cell(r.name), Cell(str(r.seed))] + [Cell(format_value(r.value(c.key), c.fmt)) for c in cols]
            for r in sorted(result.runs, key=lambda r: (result.estimators.index(r.name), r.seed))]
    return Table("every seed", ["method", "seed"] + [c.label for c in cols], rows)


def console_tables(result: CompareResult, recipe_path) -> list[Table]:
    """What the CLI prints of a comparison: the summary over seeds, headed by the recipe and its
    step count, then the seed-paired differences when there are any."""
    summary = summary_table(result)
    heading = f"rvq compare: {recipe_path}, {result.recipe.train.steps} steps, "
    return [replace(summary, title=heading + summary.title)] + list(filter(None, [difference_table(result)]))


# --------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------


def _by_estimator(runs: list[EstimatorRun]) -> dict[str, list[EstimatorRun]]:
    out: dict[str, list[EstimatorRun]] = {}
    for r in runs:
        out.setdefault(r.name, []).append(r)
    return out


def plot_series(runs: list[EstimatorRun], panels, path: Path, title: str) -> dict[str, dict[str, tuple]]:
    """One panel per metric, one line per estimator (metric vs step): the mean over its seeds at
    the steps every seed logged, with the band from the lowest to the highest seed; returns
    {metric: {estimator: (steps, mean, low, high)}} as drawn."""
    fig, axes = new_figure(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    drawn: dict[str, dict[str, tuple]] = {}
    groups = _by_estimator(runs)
    for ax, (key, label, log) in zip(axes[0], panels):
        drawn[key] = {}
        for name, group in groups.items():
            series = [{r["step"]: r[key] for r in run.history if r.get(key) is not None} for run in group]
            steps = sorted(set.intersection(*(set(s) for s in series))) if series else []
            if not steps:
                continue
            vals = np.array([[s[t] for t in steps] for s in series], dtype=np.float64)  # (seeds, steps)
            mean, low, high = vals.mean(0), vals.min(0), vals.max(0)
            line, = ax.plot(steps, mean, label=name if len(group) == 1 else f"{name} ({len(group)} seeds)",
                            marker="o" if len(steps) < 4 else None, linewidth=1.4)
            if len(group) > 1:
                ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
            drawn[key][name] = (tuple(steps), tuple(mean), tuple(low), tuple(high))
        if log and any(v > 0 for *_, vs in drawn[key].values() for v in vs):
            ax.set_yscale("log")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    seeds = max((len(g) for g in groups.values()), default=1)
    fig.suptitle(title + (f" (mean; band: lowest to highest of {seeds} seeds)" if seeds > 1 else ""), fontsize=11)
    save_figure(fig, path)
    return drawn


def plot_usage(runs: list[EstimatorRun], path: Path) -> dict[str, list[np.ndarray]]:
    """Per estimator, how often each code was chosen over the validation set, codes sorted from
    most to least used (log scale): bars for one seed, one line per seed for several; returns
    the sorted counts of each seed as drawn."""
    groups = _by_estimator(runs)
    fig, axes = new_figure(1, len(groups), figsize=(4.2 * len(groups), 3.2), sharey=True)
    drawn = {}
    for ax, (name, group) in zip(axes[0], groups.items()):
        sorted_counts = [np.sort(np.asarray(r.code_counts, dtype=np.int64))[::-1] for r in group]
        drawn[name] = sorted_counts
        used = [int((c > 0).sum()) for c in sorted_counts]
        for run, counts, u in zip(group, sorted_counts, used):
            if not u:
                continue
            # unused codes get no bar or line: the empty tail is the unused part of the codebook
            if len(group) == 1:
                ax.bar(np.arange(u), counts[:u], width=1.0, color="tab:blue", linewidth=0)
            else:
                ax.step(np.arange(u), counts[:u], where="post", linewidth=1.0, label=f"seed {run.seed}")
        if any(used):
            ax.set_yscale("log")
        if len(group) > 1 and any(used):
            ax.legend(fontsize=7)
        size = len(sorted_counts[0]) if sorted_counts else 0
        ax.set_xlim(0, max(size, 1))
        ax.set_title(f"{name}: {', '.join(map(str, used))} of {size} codes used", fontsize=10)
        ax.set_xlabel("code (sorted by use)")
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel("times chosen (validation set)")
    save_figure(fig, path)
    return drawn


def plot_reconstructions(images: torch.Tensor, runs: list[EstimatorRun], path: Path) -> dict[str, torch.Tensor]:
    """The same validation images (top row) reconstructed by each run's final checkpoint, one row
    per run, in eval mode; returns the reconstructions in [-1, 1]."""
    from ..grids import grid_frames
    from ..runs import load_tokenizer

    recs = {}
    for run in runs:
        tok = load_tokenizer(run.run_dir)
        with torch.no_grad():
            recs[run.name] = tok.model(images.to(next(tok.model.parameters()).device)).reconstruction.float() \
                .clamp(-1, 1).cpu()
    if images.dim() == 5:  # clips: 4 evenly spaced frames of each, side by side
        images, recs = grid_frames(images), {k: grid_frames(v) for k, v in recs.items()}
    rows = [("original", images)] + list(recs.items())
    n = len(images)
    fig, axes = new_figure(len(rows), max(n, 1), figsize=(1.3 * max(n, 1), 1.4 * len(rows)))
    for i, (label, batch) in enumerate(rows):
        for j in range(max(n, 1)):
            ax = axes[i][j]
            hide_ticks(ax)
            if j < n:
                img = ((batch[j] + 1) / 2).clamp(0, 1).permute(1, 2, 0).numpy()
                ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None)
        axes[i][0].set_ylabel(label, fontsize=9, rotation=0, ha="right", va="center")
    fig.subplots_adjust(wspace=0.03, hspace=0.03)
    save_figure(fig, path)
    return recs


def write_figures(folder: Path, runs: list[EstimatorRun], images: torch.Tensor,
                  say: Callable[[str], None] = print) -> dict[str, Path]:
    """All figures of a comparison; the reconstructions are of the first seed's runs."""
    out = {
        "curves": folder / "curves.png", "diagnostics": folder / "diagnostics.png",
        "usage": folder / "usage.png", "reconstructions": folder / "reconstructions.png",
    }
    plot_series(runs, CURVES, out["curves"], "training curves")
    plot_series(runs, DIAGNOSTICS, out["diagnostics"], "gradient diagnostics")
    plot_usage(runs, out["usage"])
    first = min(r.seed for r in runs)
    plot_reconstructions(images, [r for r in runs if r.seed == first], out["reconstructions"])
    return out


def write_markdown(result: CompareResult, recipe_path, overrides) -> Path:
    r = result.recipe
    seeds = ", ".join(map(str, result.seeds))
    fingerprints = sorted({run.shared_fingerprint for run in result.runs})
    lines = [
        f"# rvq compare: {', '.join(result.estimators)}",
        "",
        f"Recipe `{recipe_path}`" + (f" with `{' '.join(overrides)}`" if overrides else "") +
        f": {r.train.steps} steps, seed{'s' * (len(result.seeds) > 1)} {seeds}, batch {r.train.batch_size} × "
        f"accumulation {r.train.grad_accum}, {r.model.quantizer.codebook_size} codes of dimension "
        f"{r.model.quantizer.codebook_dim or r.model.quantizer.dim} ({r.model.quantizer.lookup}, "
        f"{r.model.quantizer.update}). Within a seed every run starts from the same encoder and decoder weights "
        f"(fingerprint{'s' * (len(fingerprints) > 1)} {', '.join(fingerprints)}) and reads the same data in the "
        "same order; the method is the only difference.",
        "",
        f"Training columns: mean over the logs of the last {TRAIN_WINDOW:.0%} of the steps. Validation columns: "
        f"`rvq eval` on `{r.data.val}`. In **bold**: the method whose seed-paired difference to every other "
        "has a 95% interval on the better side of zero (none with one seed).",
        "",
    ]
    tables = [summary_table(result), difference_table(result)]
    if len(result.seeds) > 1:
        tables.append(seed_table(result))
    for table in filter(None, tables):
        lines += [f"**{table.title[0].upper() + table.title[1:]}**", ""] + table.markdown() + [""]
    lines += ["![training curves](figures/curves.png)", "", "![gradient diagnostics](figures/diagnostics.png)",
              "", "![codebook usage](figures/usage.png)", "",
              "![reconstructions: originals on top, then one row per method](figures/reconstructions.png)", ""]
    if result.notes:
        lines += ["Notes:", ""] + [f"- {n}" for n in result.notes] + [""]
    lines += ["Runs: " + ", ".join(f"`{run.run_dir}` ({run.status})" for run in result.runs), ""]
    result.md_path.write_text("\n".join(lines))
    return result.md_path
