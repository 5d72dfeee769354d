"""Statistics of a comparison over seeds: per-estimator summaries and seed-paired differences.

Within a seed every estimator starts from the same weights and reads the same data in the same
order, so the natural comparison is paired: for seed s, d_s = x(estimator, s) − x(baseline, s).
Its 95% interval is Student's t over the n seeds, d̄ ± t(0.975, n − 1) · s_d / √n. A value is
called better only when that interval excludes zero; with one seed there is no interval.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["LEVEL", "Difference", "Summary", "better_than", "paired_difference", "summarize"]

LEVEL = 0.95  # confidence level of every interval in a comparison


@dataclass(frozen=True)
class Summary:
    """One column of one estimator over seeds."""

    mean: float
    std: float | None  # sample standard deviation (n − 1); None for a single seed
    values: tuple[float, ...]  # per seed, in the comparison's seed order


@dataclass(frozen=True)
class Difference:
    """Seed-paired difference ``estimator − baseline`` of one column."""

    mean: float
    std: float | None  # of the per-seed differences; None for a single seed
    low: float | None  # LEVEL interval of the mean difference; None for a single seed
    high: float | None
    values: tuple[float, ...]  # per seed

    @property
    def excludes_zero(self) -> bool:
        return self.low is not None and (self.low > 0 or self.high < 0)


def _std(xs: Sequence[float]) -> float | None:
    """Sample standard deviation (n − 1), exactly 0 for equal values; None for one value."""
    return statistics.stdev(xs) if len(xs) > 1 else None


def summarize(values: Sequence[float]) -> Summary:
    """Mean, sample standard deviation and the values themselves."""
    if not values:
        raise ValueError("summarize needs at least one value")
    xs = tuple(float(v) for v in values)
    return Summary(sum(xs) / len(xs), _std(xs), xs)


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with ``df`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(p, df))


def paired_difference(values: Sequence[float], baseline: Sequence[float], level: float = LEVEL) -> Difference:
    """``values − baseline`` seed by seed, with the t interval of its mean at ``level``."""
    if len(values) != len(baseline) or not values:
        raise ValueError(f"paired values need the same, non-zero number of seeds, got {len(values)} and "
                         f"{len(baseline)}")
    d = tuple(float(a) - float(b) for a, b in zip(values, baseline))
    n, mean, sd = len(d), sum(d) / len(d), _std(d)
    if sd is None:
        return Difference(mean, None, None, None, d)
    half = t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return Difference(mean, sd, mean - half, mean + half, d)


def better_than(diff: Difference, better: str) -> bool:
    """Whether a paired difference (candidate − other) shows the candidate better at the
    interval's level: the interval lies wholly above zero ("high") or below it ("low")."""
    if diff.low is None or better not in ("high", "low"):
        return False
    return diff.low > 0 if better == "high" else diff.high < 0
