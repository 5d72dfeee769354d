"""The loss-level estimators of §3, which need the decoder and the loss to form the encoder's
gradient. The quantizer hands out what they need (``QuantizeOutput.decoder_input``,
``latents``, ``passthrough``); :func:`estimator_loss` turns the recipe's loss into the one to
differentiate.

- ``hessian``: grad_e = g + H_q (e − q), with g = ∂L/∂q and H_q the Hessian of L in the decoder
  input q. The product H_q v is a double backward (a Hessian-vector product: reverse over
  reverse), never a matrix. It enters as a surrogate term e · sg(grad_e), whose gradient in e
  is grad_e and which adds nothing to the decoder's gradient. Attention runs on PyTorch's math
  kernel meanwhile: the fused kernels have no second derivative.
- ``exact``: L = L_q + ε L_e, where L_e is the loss of the reconstruction decoded from e
  itself (no quantization). L_q reaches the decoder only (q does not depend on e), and the
  quantizer scales L_e's gradient to the encoder by 1/ε, so the encoder gets ∂L_e/∂e, the plain
  autoencoder's gradient, while the decoder gets the VQ gradient plus ε times the autoencoder's.

Both keep the quantizer's own loss (commitment, codebook) as every estimator does.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import Tensor

__all__ = ["LOSS_LEVEL", "estimator_loss", "forward_context", "hessian_gradient"]

LOSS_LEVEL = ("hessian", "exact")


def forward_context(estimator: str):
    """The context the model's forward must run in for ``estimator``: the math attention kernel
    for ``hessian`` (twice differentiable), nothing otherwise."""
    if estimator != "hessian":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


def hessian_gradient(loss: Tensor, decoder_input: Tensor, latents: Tensor) -> tuple[Tensor, Tensor]:
    """(grad_e, g): g = ∂loss/∂q at the decoder input q, and grad_e = g + H_q (e − q), both
    detached, (N, d). The forward graph of ``loss`` is kept for the backward that follows."""
    (g,) = torch.autograd.grad(loss, decoder_input, create_graph=True)
    v = (latents.detach() - decoder_input.detach()).to(g.dtype)
    if g.requires_grad:  # L is not linear in q: there is curvature to follow
        (hv,) = torch.autograd.grad(g, decoder_input, grad_outputs=v, retain_graph=True, allow_unused=True)
        hv = torch.zeros_like(g) if hv is None else hv
    else:
        hv = torch.zeros_like(g)
    return (g + hv).detach(), g.detach()


def estimator_loss(loss: Tensor, out, quantizer, decoder_loss: Callable[[Tensor], Tensor]) -> Tensor:
    """The loss to differentiate for one micro-batch, given the recipe's ``loss`` computed on the
    tokenizer output ``out`` (a :class:`~rvq_cli.models.TokenizerOutput` in training mode).
    ``decoder_loss(rec)`` is the reconstruction-dependent part of the loss for another
    reconstruction (``exact`` needs it for L_e). Pointwise and gumbel estimators: ``loss``."""
    q = out.quantize
    name = quantizer.estimator.name
    if name == "hessian" and q.decoder_input is not None:
        grad_e, g = hessian_gradient(loss, q.decoder_input, q.latents)
        quantizer.record_gradient_cosine(grad_e, g)
        return loss + (q.latents * grad_e.to(q.latents.dtype)).sum()
    if name == "exact" and out.reconstruction_e is not None:
        return loss + quantizer.epsilon * decoder_loss(out.reconstruction_e)
    return loss
