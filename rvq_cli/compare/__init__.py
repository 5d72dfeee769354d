"""Comparisons of gradient estimators: on a recipe (``rvq compare``, :func:`compare`) and on the
paper's synthetic problems (A.2, §4.3, Figure 2; :func:`run_synthetic`).

Modules: runner (train and evaluate one recipe per estimator and seed), results (what a
comparison returns: columns, runs, statistics over seeds, compare.json), report (its tables and
figures, compare.md), tables (the table shape both modes print), plotting (figure helpers of both
reports), stats (summaries and seed-paired intervals), synthetic and synthetic_report (the 2-D
problems and their tables and figures)."""

from .results import CompareResult, EstimatorRun
from .runner import CompareError, compare
from .synthetic import (
    FieldResult,
    HimmelblauResult,
    SeedSummary,
    Snapshot,
    VoronoiResult,
    field_codes,
    grad_himmelblau,
    grad_log_tanh,
    grad_quadratic,
    gradient_field,
    himmelblau,
    himmelblau_f,
    log_tanh,
    quadratic,
    seeds_summary,
    voronoi,
)
from .synthetic_report import SyntheticError, SyntheticResult, run_synthetic

__all__ = [
    "CompareError",
    "CompareResult",
    "EstimatorRun",
    "SyntheticError",
    "SyntheticResult",
    "compare",
    "run_synthetic",
    "FieldResult",
    "HimmelblauResult",
    "SeedSummary",
    "Snapshot",
    "VoronoiResult",
    "field_codes",
    "grad_himmelblau",
    "grad_log_tanh",
    "grad_quadratic",
    "gradient_field",
    "himmelblau",
    "himmelblau_f",
    "log_tanh",
    "quadratic",
    "seeds_summary",
    "voronoi",
]
