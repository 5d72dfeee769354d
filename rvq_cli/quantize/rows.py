"""The layouts both quantizers (VectorQuantizer, FSQuantizer) work in: channel-first features
as fp32 rows and back, and their projections in fp32 whatever dtype the module was cast to."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["check_indices", "from_rows", "project_fp32", "to_rows"]


def project_fp32(layer: nn.Module, x: Tensor) -> Tensor:
    """``layer(x)`` for a Linear (or Identity) in fp32, whatever dtype the module was cast to."""
    if isinstance(layer, nn.Identity):
        return x
    return F.linear(x, layer.weight.float(), layer.bias.float() if layer.bias is not None else None)


def to_rows(z: Tensor, dim: int) -> tuple[Tensor, tuple[int, ...]]:
    """Channel-first features (B, D, *spatial) -> fp32 rows (N, D) and the grid (B, *spatial)."""
    if z.dim() < 3 or z.shape[1] != dim:
        raise ValueError(f"expected input (B, {dim}, *spatial) with at least one spatial axis, "
                         f"got shape {tuple(z.shape)}")
    x = z.float().movedim(1, -1)  # (B, *spatial, D)
    grid = tuple(x.shape[:-1])
    return x.reshape(-1, dim), grid  # (N, D)


def from_rows(x: Tensor, grid: tuple[int, ...], dim: int) -> Tensor:
    """Rows (N, D) -> (B, *spatial, D) -> channel-first (B, D, *spatial)."""
    return x.reshape(*grid, dim).movedim(-1, 1).contiguous()


def check_indices(indices: Tensor, codebook_size: int) -> None:
    """A ValueError unless ``indices`` is an integer tensor of tokens 0 .. codebook_size − 1."""
    if indices.dtype.is_floating_point or indices.dtype == torch.bool:
        raise ValueError(f"indices must be an integer tensor, got {indices.dtype}")
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= codebook_size):
        raise ValueError(f"indices out of range: expected 0..{codebook_size - 1}, got "
                         f"{int(indices.min())}..{int(indices.max())}")
