"""What an estimator is to the rest of rvq: one object per method, holding what it says of
itself (for ``rvq estimators`` and the docs) and the hooks through which the quantizer and the
trainer run it. The defaults are those of a pointwise estimator; the loss-level and stochastic
ones override the hooks they need, so nothing outside their own module asks for them by name.

Hooks, in the order a training step meets them:

- ``start_step(layer, step, total_steps)``: before each optimizer step (schedules).
- ``forward_context()``: the context the model's forward runs in.
- ``indices(layer, e, codes)``: the code of each row, where it is not the nearest one (ibq).
- ``quantize(layer, found)``: the decoder's input in training (and, for pointwise estimators,
  at evaluation too) from what the nearest-code search found.
- ``training_loss(loss, out, layer, decoder_loss)``: the loss to differentiate.
- ``metrics(layer)``: the estimator's own numbers for the training log.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .kernels import fallback_kernel, flat32, run_kernel

__all__ = ["KINDS", "Estimator", "Found", "Quantized", "check_pair"]

KINDS = ("pointwise", "codebook-wide", "loss-level", "stochastic")


@dataclass(frozen=True)
class Found:
    """What the quantizer found for one batch: the rows it quantizes and their codes."""

    x: Tensor  # (N, D) the layer's input rows (before the factorising projection)
    e: Tensor  # (N, d) the latents in code space (l2-normalised under cosine lookup)
    e_raw: Tensor  # (N, d) the latents before that normalisation
    q: Tensor  # (N, d) the chosen codes; carries gradient to a learned codebook
    codes: Tensor  # (K, d) every code as the lookup uses it
    logits: Tensor | None  # (N, K) the layer's own logits (gumbel_logits linear), else None
    grid: tuple[int, ...]  # (B, *spatial) of the rows
    dtype: torch.dtype  # of the layer's input
    indices: Tensor | None = None  # (N,) the code index of each row


@dataclass
class Quantized:
    """An estimator's decoder input, and what else it hands out."""

    q_tilde: Tensor  # (N, d) what the decoder reads, in code space
    prior: Tensor | None = None  # a prior term for the quantizer's losses (gumbel's KL)
    # QuantizeOutput fields (decoder_input, latents, passthrough)
    extra: dict[str, Tensor] = field(default_factory=dict)


def check_pair(e: Tensor, q: Tensor) -> None:
    if e.shape != q.shape:
        raise ValueError(f"estimator inputs must have the same shape, got e {tuple(e.shape)} and q {tuple(q.shape)}")


@dataclass(frozen=True)
class Estimator:
    """A named estimator. A pointwise one is called as ``estimator(e, q) -> q_tilde`` on rows
    (..., D): the forward value is ``q`` bit for bit and only the gradient to ``e`` differs."""

    name: str
    fn: Callable[[Tensor, Tensor], Tensor] | None = field(repr=False)
    summary: str
    formula: str  # the gradient sent to e, in the notation of the estimators package
    fallback: str = "none"  # which rows fall back: "none", "antiparallel" or "parallel"
    kind: str = "pointwise"  # one of KINDS
    section: str = ""  # where the paper defines it
    acts_on: str = "normalized"  # cosine lookup: the estimator sees ê ("normalized") or the unnormalised e ("raw")
    double_backward: bool = False  # differentiates the decoder twice (torch.compile cannot)
    # quantizer options that act on this estimator only (a recipe setting them for another is refused)
    own_options: tuple[str, ...] = ()

    @property
    def pointwise(self) -> bool:
        return self.kind == "pointwise"

    def __call__(self, e: Tensor, q: Tensor) -> Tensor:
        if self.fn is None:
            raise TypeError(f"the {self.name!r} estimator is {self.kind}: it cannot be applied to (e, q) alone")
        return self.fn(e, q)

    @torch.no_grad()
    def count_fallbacks(self, e: Tensor, q: Tensor) -> Tensor:
        """How many rows of (e, q) take this estimator's degenerate-row fallback (0-dim int64)."""
        if self.fallback == "none":
            return torch.zeros((), dtype=torch.long, device=e.device)
        mask = run_kernel(fallback_kernel, flat32(e), flat32(q), parallel=self.fallback == "parallel")
        return mask.sum()

    # ------------------------------------------------------------ hooks (pointwise defaults)

    def start_step(self, layer, step: int, total_steps: int) -> None:
        """Before optimizer step ``step`` (0-based) of a ``total_steps`` run."""

    def forward_context(self):
        """The context the model's forward runs in for this estimator."""
        return contextlib.nullcontext()

    def indices(self, layer, e: Tensor, codes: Tensor) -> Tensor | None:
        """The code index of every row of ``e`` (None: the layer's nearest-code search)."""
        return None

    def quantize(self, layer, found: Found) -> Quantized:
        """The decoder's input: ``self(e, q)``, whose gradient to e is the estimator's alone
        (the layer watches it to report cos(grad_e, g))."""
        at = found.e_raw if self.acts_on == "raw" else found.e  # ste_raw: g reaches e before normalisation
        return Quantized(self(layer.watch_gradients(at), found.q))

    def training_loss(self, loss: Tensor, out, layer, decoder_loss: Callable[[Tensor], Tensor]) -> Tensor:
        """The loss to differentiate for one micro-batch, given the recipe's ``loss`` on the
        tokenizer output ``out``; ``decoder_loss(rec)`` is the reconstruction-dependent part of
        the loss for another reconstruction."""
        return loss

    def metrics(self, layer) -> dict[str, float]:
        """The estimator's own values for the training log."""
        return {}
