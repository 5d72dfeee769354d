"""The Hessian approximation (§3, A.3): grad_e = g + H_q (e − q), with g = ∂L/∂q and H_q the
Hessian of the loss in the decoder input q. The product H_q v is a double backward (a
Hessian-vector product: reverse over reverse), never a matrix. It enters the loss as a surrogate
term e · sg(grad_e), whose gradient in e is grad_e and which adds nothing to the decoder's
gradient. Attention runs on PyTorch's math kernel meanwhile: the fused kernels have no second
derivative. The quantizer's own loss (commitment, codebook) is kept, as for every estimator.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from .base import Estimator, Found, Quantized

__all__ = ["ENTRIES", "Hessian", "hessian_gradient"]


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


class Hessian(Estimator):
    def forward_context(self):
        """The math attention kernel and PyTorch's GroupNorm: twice differentiable."""
        from torch.nn.attention import SDPBackend, sdpa_kernel

        from ...models.groupnorm import twice_differentiable

        stack = contextlib.ExitStack()
        stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
        stack.enter_context(twice_differentiable())
        return stack

    def quantize(self, layer, found: Found) -> Quantized:
        """The decoder reads a leaf q (its gradient is g); the latents e go out with their graph."""
        q = found.q.detach().requires_grad_(True)
        return Quantized(q, extra={"decoder_input": q, "latents": found.e})

    def training_loss(self, loss: Tensor, out, layer, decoder_loss) -> Tensor:
        q = out.quantize
        if q.decoder_input is None:
            return loss
        grad_e, g = hessian_gradient(loss, q.decoder_input, q.latents)
        layer.record_gradient_cosine(grad_e, g)
        return loss + (q.latents * grad_e.to(q.latents.dtype)).sum()


ENTRIES = (
    Hessian(
        "hessian", None, "second-order Taylor step from q to e through the decoder and loss (a Hessian-vector "
        "product, no Hessian is formed)", "g + H_q (e − q)", kind="loss-level", section="§3, A.3",
        double_backward=True,
    ),
)
