"""IBQ, index backpropagation quantization (Shi et al., "Taming Scalable Visual Tokenizer for
Autoregressive Image Generation", arXiv 2412.02692; TencentARC/SEED-Voken's
IndexPropagationQuantize): a straight-through estimator on the softmax over *all* codes, so every
code receives gradient, not only the chosen ones.

With logits l = e·C (``ibq_logits: dot``, upstream) and p = softmax(l), upstream decodes
z_q = (onehot − sg(p) + p) C. rvq writes the same as q̃ = q + (p sg(C) − sg(p sg(C))) with q the code of
the index argmax l: the same gradient (to e through the logits, to every code through p and to the
chosen one through q; the softmax's product with the codes is taken at sg(C), as upstream's
coefficient is h in value), and a forward value that is q bit for bit. ``ibq_logits: distance`` uses
−‖e − c‖² instead, whose argmax is the nearest code of rvq's search.

The loss adds upstream's double-quantization term mean(q̃ − e)², with the soft gradient, to the
recipe's commitment and codebook terms (upstream's own are commitment 1 and codebook β = 0.25:
``vq_loss: taming_legacy, beta: 0.25``), and optionally the entropy term of MAGVIT-2 that IBQ uses
(``ibq_entropy_weight`` > 0): per-row entropy of softmax(l / τ) minus the entropy of its batch mean.

The N × K softmax runs over blocks of rows under activation checkpointing: it is recomputed block
by block in backward, so peak memory is one block's N_b × K, as the nearest-code search's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .. import codebook as cb
from .base import Estimator, Found, Quantized

__all__ = ["ENTRIES", "IBQ", "IBQ_LOGITS", "entropy_terms", "ibq_logits", "soft_codes"]

IBQ_LOGITS = ("dot", "distance")


def ibq_logits(e: Tensor, codes: Tensor, kind: str) -> Tensor:
    """(N, K) logits of rows ``e`` (N, d) against ``codes`` (K, d): e·c, or −‖e − c‖² up to the
    per-row constant ‖e‖² (2 e·c − ‖c‖²), which the softmax ignores."""
    if kind == "dot":
        return e @ codes.t()
    return 2.0 * e @ codes.t() - (codes * codes).sum(-1)


def _rows(n: int, k: int, chunk: int) -> int:
    return max(1, min(n, chunk // max(1, k)))


def soft_codes(e: Tensor, codes: Tensor, kind: str, chunk: int = cb.DEFAULT_CHUNK) -> Tensor:
    """softmax(logits) @ sg(codes), (N, d), over blocks of rows; each block is recomputed in
    backward. The codes get gradient through the logits only: in upstream's (h − sg(p) + p) C the
    coefficient's value is h, so the product's own gradient to C is hᵀg, which q carries."""
    def block(eb: Tensor, c: Tensor) -> Tensor:
        return ibq_logits(eb, c, kind).softmax(-1) @ c.detach()

    rows = _rows(e.shape[0], codes.shape[0], chunk)
    if not (e.requires_grad or codes.requires_grad):
        return torch.cat([block(e[i : i + rows], codes) for i in range(0, e.shape[0], rows)])
    return torch.cat([checkpoint(block, e[i : i + rows], codes, use_reentrant=False)
                      for i in range(0, e.shape[0], rows)])


def entropy_terms(e: Tensor, codes: Tensor, kind: str, temperature: float,
                  chunk: int = cb.DEFAULT_CHUNK, eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """(mean per-row entropy, entropy of the mean) of softmax(logits / τ), as MAGVIT-2's entropy
    loss that IBQ uses (with its eps inside the logs), over blocks of rows."""
    def block(eb: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        lt = ibq_logits(eb, c, kind) / temperature
        p = lt.softmax(-1)
        return -(p * F.log_softmax(lt + eps, -1)).sum(), p.sum(0)

    rows, n = _rows(e.shape[0], codes.shape[0], chunk), e.shape[0]
    parts = [checkpoint(block, e[i : i + rows], codes, use_reentrant=False) for i in range(0, n, rows)]
    sample = torch.stack([s for s, _ in parts]).sum() / n
    avg = torch.stack([p for _, p in parts]).sum(0) / n  # (K,)
    return sample, -(avg * torch.log(avg + eps)).sum()


class IBQ(Estimator):
    def indices(self, layer, e: Tensor, codes: Tensor) -> Tensor | None:
        """The argmax of the logits: e·c for dot logits (blocked, near ties decided again in
        float64), the nearest code (the layer's own search) for distance logits."""
        if layer.ibq_logits == "dot":
            return cb.nearest_codes(e, codes, "cosine", layer.chunk)  # "cosine": argmax of e·c as given
        return None

    def quantize(self, layer, found: Found) -> Quantized:
        # a copy (with its graph): the EMA update and dead-code restarts write the codebook in place
        # before backward recomputes the blocks
        codes = found.codes.clone()

        def mixed(e: Tensor) -> Tensor:  # (N, d): q forward, the softmax's gradient to e and to every code
            soft = soft_codes(e, codes, layer.ibq_logits, layer.chunk)
            return found.q + (soft - soft.detach())

        q_tilde = mixed(layer.watch_gradients(found.e))  # what the decoder reads; its gradient is watched
        loss = F.mse_loss(mixed(found.e), found.e)  # double quantization, (z_q − z)², outside the watched path
        if layer.ibq_entropy_weight > 0:
            sample, batch = entropy_terms(found.e, codes, layer.ibq_logits, layer.ibq_entropy_temperature,
                                          layer.chunk)
            loss = loss + layer.ibq_entropy_weight * (sample - batch)
        return Quantized(q_tilde, prior=loss)


ENTRIES = (
    IBQ(
        "ibq", None, "index backpropagation (IBQ): straight-through on the softmax over all codes, so every code "
        "gets gradient; plus its double-quantization term (and optionally an entropy term)",
        "g through softmax(e·C) C to e and to every code", kind="codebook-wide",
        section="Shi et al. 2024 (arXiv 2412.02692)",
        own_options=("ibq_logits", "ibq_entropy_weight", "ibq_entropy_temperature"),
    ),
)
