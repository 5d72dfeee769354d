"""Comparisons of gradient estimators on the paper's synthetic problems (A.2, §4.3, Figure 2)."""

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
