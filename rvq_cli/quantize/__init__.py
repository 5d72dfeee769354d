"""Vector quantization with a selectable gradient estimator (the paper's §3–4, A.5–A.9)."""

from .codebook import nearest_codes
from .estimators import (
    ESTIMATORS,
    GAMMAS,
    KINDS,
    POINTWISE,
    Estimator,
    get_estimator,
    reflection_vjp,
    rotation_vjp,
    set_compile,
)
from .quantizer import QuantizeLosses, QuantizeMetrics, QuantizeOutput, VectorQuantizer

__all__ = [
    "ESTIMATORS",
    "GAMMAS",
    "KINDS",
    "POINTWISE",
    "Estimator",
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
