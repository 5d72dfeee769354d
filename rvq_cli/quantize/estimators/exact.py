"""Exact gradients (§3, A.3): L = L_q + ε L_e, where L_e is the loss of the reconstruction decoded
from e itself (no quantization). L_q reaches the decoder only (q does not depend on e), and the
quantizer scales L_e's gradient to the encoder by 1/ε, so the encoder gets ∂L_e/∂e, the plain
autoencoder's gradient, while the decoder gets the VQ gradient plus ε times the autoencoder's.
The quantizer's own loss (commitment, codebook) is kept, as for every estimator.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Estimator, Found, Quantized

__all__ = ["ENTRIES", "Exact", "scale_grad"]


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the gradient is multiplied by ``scale`` on the way back."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g: Tensor):
        return g * ctx.scale, None


def scale_grad(x: Tensor, scale: float) -> Tensor:
    """``x`` forward; its gradient times ``scale`` backward."""
    return _ScaleGrad.apply(x, scale)


class Exact(Estimator):
    def quantize(self, layer, found: Found) -> Quantized:
        """The decoder reads a leaf q; e itself goes out in the layer's output layout
        (``passthrough``), its gradient scaled by 1/ε on the way back to the encoder."""
        q = found.q.detach().requires_grad_(True)
        passthrough = scale_grad(layer.watch_gradients(found.e), 1.0 / layer.epsilon)
        return Quantized(q, extra={"decoder_input": q,
                                   "passthrough": layer.to_output(passthrough, found.grid, found.dtype)})

    def training_loss(self, loss: Tensor, out, layer, decoder_loss) -> Tensor:
        if out.reconstruction_e is None:
            return loss
        return loss + layer.epsilon * decoder_loss(out.reconstruction_e)


ENTRIES = (
    Exact(
        "exact", None, "two forward passes, L = L_q + ε L_e: the encoder gets the plain autoencoder's gradient, "
        "the decoder the VQ one", "∂L_e/∂e", kind="loss-level", section="§3, A.3",
    ),
)
