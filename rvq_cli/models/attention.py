"""softmax(q kᵀ / √d) v, the attention of every rvq model, in the faster of two forms.

:func:`torch.nn.functional.scaled_dot_product_attention` everywhere, except for short sequences
in bf16 on the CPU, where the two batched matmuls with a softmax between them run in about half
its time: its CPU flash kernel walks the sequence in blocks, and at a few hundred tokens the
blocks' bookkeeping costs more than the attention matrix that the matmul form keeps (fwd + bwd,
batch 4 × 8 heads × 64 dims, AMX Xeon, bf16: 5.0 against 10.2 ms at 256 tokens, 11 against 17 ms
at 384, equal at 512, and SDPA 2.4× faster at 1024; docs/benchmarks.md). In fp32 SDPA is the faster
form at every length measured, so nothing changes there, nor on GPUs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["MATMUL_MAX_TOKENS", "attention"]

MATMUL_MAX_TOKENS = 384  # the longest key sequence that takes the matmul form (CPU, bf16)


def attention(q: Tensor, k: Tensor, v: Tensor, dropout_p: float = 0.0) -> Tensor:
    """(…, N, d) queries, (…, M, d) keys and (…, M, d_v) values -> (…, N, d_v), the scale
    1/√d and dropout ``dropout_p`` on the attention weights as in SDPA (pass 0 in eval mode)."""
    if q.device.type == "cpu" and q.dtype == torch.bfloat16 and k.shape[-2] <= MATMUL_MAX_TOKENS:
        weights = ((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
        return F.dropout(weights, dropout_p) @ v if dropout_p else weights @ v
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
