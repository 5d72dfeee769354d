"""Vector quantization with a selectable gradient estimator (the paper's §3–4, A.5–A.9), and finite
scalar quantization (FSQ) as the baseline without a codebook."""

from .codebook import nearest_codes
from .estimators import (
    ESTIMATORS,
    GAMMAS,
    KINDS,
    PAIRWISE,
    POINTWISE,
    Estimator,
    get_estimator,
    reflection_vjp,
    rotation_vjp,
    set_compile,
)
from .fsq import FSQuantizer
from .quantizer import QuantizeLosses, QuantizeMetrics, QuantizeOutput, VectorQuantizer

__all__ = [
    "ESTIMATORS",
    "GAMMAS",
    "KINDS",
    "PAIRWISE",
    "POINTWISE",
    "Estimator",
    "FSQuantizer",
    "QuantizeLosses",
    "QuantizeMetrics",
    "QuantizeOutput",
    "VectorQuantizer",
    "get_estimator",
    "nearest_codes",
    "reflection_vjp",
    "rotation_vjp",
    "set_compile",
]
