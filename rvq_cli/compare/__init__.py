"""Comparisons of gradient estimators: on a recipe (``rvq compare``, :func:`compare`) and on the
paper's synthetic problems (A.2, §4.3, Figure 2; :func:`run_synthetic`)."""

from .runner import CompareError, CompareResult, EstimatorRun, compare
from .synthetic_report import SyntheticError, SyntheticResult, run_synthetic

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
