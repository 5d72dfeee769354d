"""Gumbel-softmax quantization (§5.1, A.10.1, after karpathy/deep-vector-quantization): in
training the decoder reads a Gumbel-softmax mixture of codes at a temperature annealed from 1 to
1/16, and a KL term to the uniform prior joins the quantizer's losses; at evaluation it reads the
code of the index the layer reports, hard.

Logits: ``distance`` (−‖e − c‖² up to a per-row constant, so the most likely code is the nearest
one, which is the token) or ``linear`` (karpathy's learned Linear(dim, K) on the layer's input;
the token is the argmax of the logits). Samples: ``soft`` decodes the relaxed sample, ``hard``
its one-hot with the relaxed sample's gradient (taming-transformers' GumbelVQ).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Estimator, Found, Quantized

__all__ = ["ENTRIES", "GUMBEL_LOGITS", "GUMBEL_SAMPLES", "GUMBEL_TEMPERATURE", "Gumbel", "cosine_anneal",
           "logit_projection"]

GUMBEL_TEMPERATURE = (1.0, 1.0 / 16.0)  # the paper's Gumbel baseline (A.10.1, after karpathy/deep-vector-quantization)
GUMBEL_LOGITS = ("distance", "linear")
GUMBEL_SAMPLES = ("soft", "hard")  # what the decoder gets in training: the relaxed sample, or its one-hot
_LOGIT_SEED = 0x6B61_7270_6174_6879  # mixed into torch's seed for the linear logits' own generator


def cosine_anneal(start: float, end: float, progress: float) -> float:
    """``start`` at progress 0 to ``end`` at 1 along 1 − cos(πp/2): the Gumbel temperature
    schedule of karpathy/deep-vector-quantization, which the paper's baseline follows."""
    a = 1.0 - math.cos(min(1.0, max(0.0, progress)) * math.pi / 2)
    return a * end + (1.0 - a) * start


def logit_projection(dim: int, codebook_size: int) -> nn.Linear:
    """Linear(dim, K) with bias, initialised as nn.Linear (and karpathy's 1×1 nn.Conv2d) are,
    weight and bias U(±1/√dim), but drawn from a generator of its own seeded from torch's seed:
    the layers built after it start from the same weights as under every other estimator."""
    layer = nn.Linear(dim, codebook_size, device="meta").to_empty(device="cpu")
    g = torch.Generator().manual_seed(torch.initial_seed() ^ _LOGIT_SEED)
    bound = 1.0 / math.sqrt(dim)
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound, generator=g)
        layer.bias.uniform_(-bound, bound, generator=g)
    return layer


class Gumbel(Estimator):
    """The layer keeps the schedule's state (``temperature``, ``kl_scale``) and options
    (``temperature_range``, ``temperature_steps``, ``kl_weight``, ``kl_warmup_steps``,
    ``gumbel_sample``, ``logit_proj``); this object runs them."""

    def start_step(self, layer, step: int, total_steps: int) -> None:
        """The temperature from start to end over ``temperature_steps`` (None: the run) and the
        KL weight (:meth:`VectorQuantizer.kl_weight_at`): functions of the step alone, so a
        resumed run continues them exactly."""
        horizon = layer.temperature_steps or total_steps
        layer.temperature = cosine_anneal(*layer.temperature_range, step / max(1, horizon))
        layer.kl_scale = layer.kl_weight_at(step)

    def quantize(self, layer, found: Found) -> Quantized:
        """A Gumbel-softmax mixture of codes at the current temperature, and the weighted KL of
        softmax(logits) to the uniform prior. Distance logits read the latents e: 2 e·c − ‖c‖²;
        linear logits are W x + b of the layer's input x. The mixture carries gradient to what
        the logits read, and to the codes when the codebook is learned."""
        linear = found.logits is not None
        v = found.x if linear else found.e
        # a copy: the EMA update and dead-code restarts write the codebook in place before backward
        codes = found.codes.clone() if layer.update == "learned" else found.codes.detach().clone()

        def logits_of(rows: Tensor) -> Tensor:  # (N, ·) -> (N, K)
            if linear:
                return layer.project(layer.logit_proj, rows)
            return 2.0 * rows @ codes.t() - (codes * codes).sum(-1)

        # hard: the one-hot of the sample forward, the relaxed sample's gradient (taming's GumbelVQ)
        soft = F.gumbel_softmax(logits_of(layer.watch_gradients(v)), tau=layer.temperature,
                                hard=layer.gumbel_sample == "hard")  # (N, K)
        # the prior term reaches e outside the watched path
        p = (found.logits if linear else logits_of(v)).softmax(-1)  # (N, K)
        kl = (p * torch.log(p * layer.codebook_size + 1e-10)).sum(-1).mean()  # Σ p log(p / (1/K)), as karpathy's
        return Quantized(soft @ codes, prior=layer.kl_scale * kl)

    def metrics(self, layer) -> dict[str, float]:
        return {"temperature": float(layer.temperature), "kl_weight": float(layer.kl_scale)}


ENTRIES = (
    Gumbel(
        "gumbel", None, "Gumbel-softmax mixture of codes, temperature annealed 1 → 1/16; logits: negative code "
        "distances, or karpathy's learned linear map (gumbel_logits); hard code of the reported index at eval",
        "through the soft mixture", kind="stochastic", section="§5.1, A.10.1",
        own_options=("gumbel_logits", "kl_warmup_steps", "temperature_steps", "gumbel_sample"),
    ),
)
