"""What ``rvq compare`` produces: the columns of its tables, one run's values
(:class:`EstimatorRun`), the whole comparison (:class:`CompareResult`), and the pure functions
over runs that the runner and the report share: the statistics over seeds, the best marks, the
notes on missing values, and compare.json.

Nothing here trains, evaluates or draws; :mod:`.runner` makes the runs, :mod:`.report` renders
them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .stats import LEVEL, Difference, Summary, better_than, paired_difference, summarize

if TYPE_CHECKING:
    from ..config import Recipe
    from .tables import Table

__all__ = ["COLUMNS", "TRAIN_WINDOW", "Column", "CompareResult", "EstimatorRun", "best_values", "missing_values",
           "seed_statistics", "to_json"]

TRAIN_WINDOW = 0.1  # training metrics: the mean over the logs of the last tenth of the steps


@dataclass(frozen=True)
class Column:
    key: str  # "train.usage" or "eval.rfid": section and metric
    label: str
    better: str  # "high" or "low"; "" for no ranking
    fmt: str = "{:.4g}"


# The paper's Table 1, then throughput and the gradient diagnostics.
COLUMNS = (
    Column("train.usage", "usage ↑", "high", "{:.1%}"),
    Column("train.rec_loss", "train rec ↓", "low"),
    Column("train.quant_error", "quant err ↓", "low", "{:.3e}"),
    Column("eval.rec_loss", "val rec ↓", "low"),
    Column("eval.rfid", "r-FID ↓", "low", "{:.2f}"),
    Column("eval.ris", "r-IS ↑", "high", "{:.2f}"),
    Column("eval.ssim", "SSIM ↑", "high", "{:.4f}"),
    Column("eval.lpips_alex", "LPIPS ↓", "low", "{:.4f}"),
    Column("eval.lpips_vgg", "LPIPS-VGG ↓", "low", "{:.4f}"),
    Column("train.steps_per_s", "steps/s ↑", "high", "{:.2f}"),
    Column("eval.usage", "val usage ↑", "high", "{:.1%}"),
    Column("eval.quant_error", "val quant err ↓", "low", "{:.3e}"),
    Column("eval.quant_error_relative", "val rel. quant err ↓", "low", "{:.3e}"),
    Column("train.grad_cos", "cos(∇e, g)", "", "{:.3f}"),
    Column("train.obtuse", "obtuse", "", "{:.2%}"),
    Column("train.fallbacks", "fallbacks", "", "{:.0f}"),
)


@dataclass
class EstimatorRun:
    name: str
    seed: int
    run_dir: Path
    status: str  # "trained", "resumed" or "reused"
    train: dict  # training metrics over the last tenth of the run, plus steps_per_s
    eval: dict  # eval.json's metrics
    init_fingerprint: str  # of the whole tokenizer at step 0
    shared_fingerprint: str  # of the part every method shares (rvq_cli.training.start)
    history: list[dict] = field(repr=False, default_factory=list)  # metrics.jsonl
    code_counts: list[int] = field(repr=False, default_factory=list)  # per code, over the validation set

    def value(self, key: str):
        section, metric = key.split(".", 1)
        return getattr(self, section).get(metric)


@dataclass
class CompareResult:
    out_dir: Path
    recipe: Recipe
    estimators: list[str]  # in the order given; the first is the baseline of the differences
    seeds: list[int]
    runs: list[EstimatorRun]  # one per (seed, estimator), seed-major
    summary: dict[str, dict[str, Summary]]  # estimator -> column key -> over seeds
    differences: dict[str, dict[str, Difference]]  # estimator (not the first) -> column key -> vs the first
    best: dict[str, list[str]]  # column key -> the estimator shown better than every other (LEVEL interval)
    json_path: Path
    md_path: Path
    figures: dict[str, Path]
    notes: list[str]
    # what the CLI prints, as the synthetic mode's tables (report.console_tables): the summary over
    # seeds, then the seed-paired differences when there are any
    tables: list[Table] = field(repr=False, default_factory=list)

    @property
    def baseline(self) -> str:
        return self.estimators[0]


def _column_values(runs: list[EstimatorRun], name: str, seeds: list[int], key: str) -> list[float] | None:
    """The column's value for each seed of ``name``, or None when any seed lacks it."""
    by_seed = {r.seed: r.value(key) for r in runs if r.name == name}
    vals = [by_seed.get(s) for s in seeds]
    return None if any(v is None for v in vals) else [float(v) for v in vals]


def missing_values(runs: list[EstimatorRun], estimators: list[str], seeds: list[int]) -> list[str]:
    """A note for every column that some seeds of an estimator have and others lack (that
    estimator's column is then left out of the summary rather than summarised over fewer seeds),
    and for every non-finite value (a diverged run: never marked best)."""
    notes = []
    for col in COLUMNS:
        for name in estimators:
            by_seed = {r.seed: r.value(col.key) for r in runs if r.name == name}
            have = [s for s in seeds if by_seed.get(s) is not None]
            if have and len(have) < len(seeds):
                lacking = ", ".join(str(s) for s in seeds if s not in have)
                notes.append(f"{col.label}: {name} has no value for seed(s) {lacking}, so its column is not "
                             "summarised.")
            bad = [s for s in have if not math.isfinite(float(by_seed[s]))]
            if bad:
                notes.append(f"{col.label}: {name} is not finite for seed(s) {', '.join(map(str, bad))} "
                             "(a diverged run?); its summary is not finite and never marked best.")
    return notes


def seed_statistics(runs: list[EstimatorRun], estimators: list[str], seeds: list[int]
                    ) -> tuple[dict[str, dict[str, Summary]], dict[str, dict[str, Difference]]]:
    """Per estimator and column: the summary over seeds; per estimator after the first: the
    seed-paired difference to the first."""
    summary: dict[str, dict[str, Summary]] = {n: {} for n in estimators}
    differences: dict[str, dict[str, Difference]] = {n: {} for n in estimators[1:]}
    for col in COLUMNS:
        base = _column_values(runs, estimators[0], seeds, col.key)
        for name in estimators:
            vals = _column_values(runs, name, seeds, col.key)
            if vals is None:
                continue
            summary[name][col.key] = summarize(vals)
            if name != estimators[0] and base is not None:
                differences[name][col.key] = paired_difference(vals, base)
    return summary, differences


def best_values(runs: list[EstimatorRun], estimators: list[str], seeds: list[int]) -> dict[str, list[str]]:
    """Per ranked column, the estimator whose seed-paired difference to every other estimator has
    a LEVEL interval on the better side of zero (at most one; none with one seed or one estimator)."""
    best: dict[str, list[str]] = {}
    if len(estimators) < 2 or len(seeds) < 2:
        return best
    for col in COLUMNS:
        if not col.better:
            continue
        vals = {n: v for n in estimators if (v := _column_values(runs, n, seeds, col.key)) is not None}
        if len(vals) < 2:
            continue
        for cand, mine in vals.items():
            if all(better_than(paired_difference(mine, other), col.better)
                   for name, other in vals.items() if name != cand):
                best[col.key] = [cand]
                break
    return best


def _summary_json(x: Summary | Difference) -> dict:
    out = {"mean": x.mean, "std": x.std, "values": list(x.values)}
    if isinstance(x, Difference):
        out.update(low=x.low, high=x.high, excludes_zero=x.excludes_zero)
    return out


def to_json(result: CompareResult, recipe_path, overrides) -> dict:
    """compare.json: the recipe, every run's values, the summaries, differences and best marks."""
    return {
        "recipe": str(recipe_path), "overrides": list(overrides), "steps": result.recipe.train.steps,
        "estimators": result.estimators, "seeds": result.seeds, "validation": result.recipe.data.val,
        "train_window": f"mean over the logs of the last {TRAIN_WINDOW:.0%} of the steps",
        "columns": [{"key": c.key, "label": c.label, "better": c.better} for c in COLUMNS],
        "runs": [{"estimator": r.name, "seed": r.seed, "run_dir": str(r.run_dir), "status": r.status,
                  "init_fingerprint": r.init_fingerprint,
                  "shared_fingerprint": r.shared_fingerprint, "train": r.train, "eval": r.eval} for r in result.runs],
        "summary": {n: {k: _summary_json(v) for k, v in cols.items()} for n, cols in result.summary.items()},
        "differences": {
            "baseline": result.baseline, "level": LEVEL,
            "interval": "Student's t over seeds of the seed-paired differences (estimator − baseline)",
            "estimators": {n: {k: _summary_json(v) for k, v in cols.items()}
                           for n, cols in result.differences.items()},
        },
        "best": result.best,
        "best_rule": f"the estimator whose paired difference to every other has a {LEVEL:.0%} interval on the "
                     "better side of zero; none with one seed",
        "figures": {k: str(v) for k, v in result.figures.items()},
        "notes": result.notes,
        "written": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
