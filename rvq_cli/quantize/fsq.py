"""Finite scalar quantization (FSQ; Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made
Simple", arXiv 2309.15505): each of d channels is bounded and rounded to one of L_i levels, so the
codebook is the implicit grid of ∏ L_i points, with nothing learned and nothing to collapse.

Per channel with L levels (the paper's A.1 code, as vector-quantize-pytorch's ``FSQ`` has it):
half_l = (L − 1)(1 + 1e-3)/2, offset = ½ for even L (else 0), shift = atanh(offset/half_l),
b = tanh(h + shift)·half_l − offset, level = round(b) + ⌊L/2⌋ ∈ {0 … L − 1}, and the code value
q = (level − ⌊L/2⌋)/⌊L/2⌋ ∈ [-1, 1]. The index of a row is Σ_i level_i · basis_i with the mixed
radix basis_i = ∏_{j<i} L_j (the first channel varies fastest).

The rounding's gradient is the straight-through estimator's (``ESTIMATORS["ste"]``, §3 of the
rotation-trick paper) in code space: q̃ = e + sg(q − e) with e = b/⌊L/2⌋, so grad_e = g and the
gradient reaching h is g/⌊L/2⌋ · d b/d h, as vector-quantize-pytorch's ``round_ste``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import codebook as cb
from .estimators import ESTIMATORS
from .quantizer import QuantizeLosses, QuantizeMetrics, QuantizeOutput
from .rows import check_indices, from_rows, project_fp32, to_rows

__all__ = ["BOUND_EPS", "MAX_CODES", "PAPER_LEVELS", "FSQuantizer", "check_levels", "paper_levels"]

BOUND_EPS = 1e-3  # half_l = (L − 1)(1 + ε)/2: the bound slightly exceeds the outer levels (the paper's A.1)
MAX_CODES = 2**31 - 1  # ∏ levels: token shards store indices as uint16 or int32

# The paper's recommended levels for a target codebook size 2^bits (its table of level sets;
# also in vector-quantize-pytorch's README): bits -> levels, ∏ levels in the comment.
PAPER_LEVELS: dict[int, tuple[int, ...]] = {
    8: (8, 6, 5),  # 240 codes
    10: (8, 5, 5, 5),  # 1000
    12: (7, 5, 5, 5, 5),  # 4375
    14: (8, 8, 8, 6, 5),  # 15360
    16: (8, 8, 8, 5, 5, 5),  # 64000
}


def paper_levels(codebook_size: int) -> tuple[int, ...]:
    """The paper's level set for the codebook size nearest ``codebook_size`` on a log scale
    (1024 codes: (8, 5, 5, 5), 1000 codes)."""
    bits = math.log2(max(codebook_size, 2))
    return PAPER_LEVELS[min(PAPER_LEVELS, key=lambda b: (abs(b - bits), b))]


def check_levels(levels: Sequence[int]) -> tuple[int, ...]:
    """``levels`` as a tuple of ints, or a ValueError saying what is wrong with them."""
    out = tuple(levels)
    if not out or not all(isinstance(n, int) and not isinstance(n, bool) for n in out):
        raise ValueError(f"levels must be a non-empty list of integers, got {list(out)}")
    if min(out) < 3:
        raise ValueError(f"every level must be >= 3, got {list(out)} (with 2 levels the half-level offset puts "
                         "almost every input in one bin; vector-quantize-pytorch refuses them the same way)")
    if math.prod(out) > MAX_CODES:
        raise ValueError(f"levels {list(out)} give {math.prod(out)} codes, more than token shards can index "
                         f"({MAX_CODES})")
    return out


class FSQuantizer(nn.Module):
    """Finite scalar quantizer with the interface of :class:`~rvq_cli.quantize.VectorQuantizer`.

    Args:
        dim: channels D of the input (B, D, *spatial).
        levels: levels L_i per code channel; d = len(levels) code channels, ∏ L_i codes. When
            D ≠ d, linear projections D→d before the rounding and d→D after it (with bias, as
            vector-quantize-pytorch's ``project_in``/``project_out``).
        estimator: the rounding's gradient estimator; only "ste" (the paper's straight-through
            rounding) is defined for FSQ.

    ``forward`` returns the same :class:`QuantizeOutput` as the vector quantizer: losses are all
    zero (FSQ has no commitment or codebook term), ``fallbacks`` and ``restarted`` are 0, and
    ``quantized`` is exactly ``indices_to_codes(indices)`` in training and at eval. The state
    dict holds the projections only: the codebook is implicit.
    """

    def __init__(self, dim: int, levels: Sequence[int], *, estimator: str = "ste") -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"need dim >= 1, got dim={dim}")
        if estimator != "ste":
            raise ValueError(f"FSQ rounds with the straight-through estimator; estimator must be 'ste', got "
                             f"{estimator!r}")
        self.levels = check_levels(levels)
        self.estimator = ESTIMATORS["ste"]
        self.dim, self.codebook_dim = dim, len(self.levels)
        self.codebook_size = math.prod(self.levels)
        factorised = self.codebook_dim != dim
        self.project_in = nn.Linear(dim, self.codebook_dim) if factorised else nn.Identity()
        self.project_out = nn.Linear(self.codebook_dim, dim) if factorised else nn.Identity()
        basis = [math.prod(self.levels[:i]) for i in range(len(self.levels))]  # mixed radix, first channel fastest
        # integer constants, not in the state dict (they follow from ``levels``); .to(dtype) leaves them as they are
        self.register_buffer("level_counts", torch.tensor(self.levels, dtype=torch.long), persistent=False)
        self.register_buffer("basis", torch.tensor(basis, dtype=torch.long), persistent=False)
        self._grad_cos: Tensor | None = None  # Σ over backward passes of mean cos(grad_e, g) (gradient_cosine)
        self._grad_cos_n = 0

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, levels={list(self.levels)}, codebook_size={self.codebook_size}, "
                f"estimator={self.estimator.name}")

    # ------------------------------------------------------------ the grid

    def _half_width(self) -> Tensor:
        return self.level_counts // 2  # ⌊L/2⌋ (d,)

    def bound(self, h: Tensor) -> Tensor:
        """b = tanh(h + shift)·half_l − offset (d channels last, fp32): round(b) + ⌊L/2⌋ is a level."""
        n = self.level_counts
        half_l = (n - 1).float() * (1 + BOUND_EPS) / 2
        offset = torch.where(n % 2 == 0, 0.5, 0.0)  # even L: levels sit at half-integers of tanh's range
        shift = torch.atanh(offset / half_l)  # so that h = 0 maps to b = 0
        return torch.tanh(h + shift) * half_l - offset

    def _values(self, levels: Tensor) -> Tensor:
        """Code values (..., d) of level numbers (..., d): (level − ⌊L/2⌋)/⌊L/2⌋, the one place they
        are computed (forward and indices_to_codes agree bit for bit)."""
        hw = self._half_width()
        return (levels - hw).float() / hw.float()

    def grid_points(self, indices: Tensor) -> Tensor:
        """Indices (...) -> their grid points (..., d) in code space (before ``project_out``)."""
        return self._values(self._levels_of(indices))

    def grid_indices(self, points: Tensor) -> Tensor:
        """Grid points (..., d) in code space -> their indices (...) int64 (the inverse of
        :meth:`grid_points`; points off the grid go to the nearest level per channel)."""
        if points.shape[-1] != self.codebook_dim:
            raise ValueError(f"expected grid points (..., {self.codebook_dim}), got shape {tuple(points.shape)}")
        hw = self._half_width()
        levels = (points.float() * hw.float()).round().long() + hw
        return (levels.clamp(torch.zeros_like(hw), self.level_counts - 1) * self.basis).sum(-1)

    def _levels_of(self, indices: Tensor) -> Tensor:
        return (indices.long().unsqueeze(-1) // self.basis) % self.level_counts  # (...) -> (..., d)

    # ------------------------------------------------------------ layout

    def project(self, layer: nn.Module, x: Tensor) -> Tensor:
        """A projection applied in fp32, whatever dtype the module was cast to."""
        return project_fp32(layer, x)

    def _flatten(self, z: Tensor) -> tuple[Tensor, tuple[int, ...]]:
        return to_rows(z, self.dim)

    def _unflatten(self, x: Tensor, grid: tuple[int, ...]) -> Tensor:
        return from_rows(x, grid, self.dim)

    # ------------------------------------------------------------ forward

    def forward(self, z: Tensor) -> QuantizeOutput:
        """Quantize channel-first features ``z`` (B, D, *spatial)."""
        with torch.autocast(device_type=z.device.type, enabled=False):  # quantizer math in fp32
            x, grid = self._flatten(z)
            h = self.project(self.project_in, x)  # (N, d)
            b = self.bound(h)  # (N, d)
            hw = self._half_width()
            levels = (b.detach().round().long() + hw).clamp(torch.zeros_like(hw), self.level_counts - 1)  # (N, d)
            indices = (levels * self.basis).sum(-1)  # (N,)
            q = self._values(levels)  # (N, d) the grid point, bit for bit what indices_to_codes gives
            e = b / hw.float()  # (N, d) the bounded latents in code space
            if torch.is_grad_enabled() and e.requires_grad:
                q_tilde = self._watched_ste(e, q)  # forward value q; grad_e = g
            else:
                q_tilde = q
            out = self._unflatten(self.project(self.project_out, q_tilde), grid)
            metrics = self._statistics(e.detach(), q, indices)
        zero = x.new_zeros(())
        losses = QuantizeLosses(commitment=zero, codebook=zero, prior=zero)  # FSQ has no loss term
        return QuantizeOutput(out.to(z.dtype), indices.reshape(grid), losses, metrics)

    def _watched_ste(self, e: Tensor, q: Tensor) -> Tensor:
        """q̃ = ste(e, q), recording the mean cos(grad_e, g) of its backward pass (read with
        :meth:`gradient_cosine`; 1 for the straight-through estimator)."""
        alias = e.view_as(e)
        seen: dict[str, Tensor] = {}

        def on(side: str, grad: Tensor) -> None:
            seen[side] = grad.detach()
            if len(seen) == 2:
                self.record_gradient_cosine(seen.pop("e"), seen.pop("q"))

        alias.register_hook(lambda grad: on("e", grad))
        q_tilde = self.estimator(alias, q)
        q_tilde.register_hook(lambda grad: on("q", grad))
        return q_tilde

    @torch.no_grad()
    def _statistics(self, e: Tensor, q: Tensor, indices: Tensor) -> QuantizeMetrics:
        """Batch statistics, over all ranks in training (one all-reduce), as the vector quantizer's."""
        k, d = self.codebook_size, self.codebook_dim
        # One buffer: [counts (K) | Σ(e − q)² | obtuse rows | Σe²]
        stats = torch.zeros(k + 3, device=e.device)
        stats[:k] = torch.bincount(indices, minlength=k).float()
        stats[k] = (e - q).pow(2).sum()
        stats[k + 1] = ((e * q).sum(-1) < 0).sum()
        stats[k + 2] = (e * e).sum()
        if self.training:
            cb.all_reduce_sum(stats)
        counts = stats[:k]
        total = counts.sum()
        p = counts / total
        entropy = -(p * torch.log(p.clamp_min(1e-30))).sum()
        zero = torch.zeros((), device=e.device)
        return QuantizeMetrics(
            usage=(counts > 0).float().mean(),
            perplexity=entropy.exp(),
            quant_error=stats[k] / (total * d),
            fallbacks=zero,
            restarted=torch.tensor(0.0),
            obtuse=stats[k + 1] / total,
            latent_power=stats[k + 2] / (total * d),
        )

    # ------------------------------------------------------------ what the trainer and the tokenizer call

    def anneal(self, step: int, total_steps: int) -> None:
        """Before optimizer step ``step``: the estimator's schedules (none for the STE)."""
        self.estimator.start_step(self, step, total_steps)

    @torch.no_grad()
    def record_gradient_cosine(self, grad_e: Tensor, g: Tensor) -> None:
        """Add one backward pass's mean over rows of cos(grad_e, g) to :meth:`gradient_cosine`."""
        cos = F.cosine_similarity(grad_e.float(), g.float(), dim=-1, eps=1e-12).mean()
        self._grad_cos = cos if self._grad_cos is None else self._grad_cos + cos
        self._grad_cos_n += 1

    def gradient_cosine(self) -> float | None:
        """Mean over rows of cos(grad_e, g) from the backward passes since the last call (None: none)."""
        total, n = self._grad_cos, self._grad_cos_n
        self._grad_cos, self._grad_cos_n = None, 0
        return float(total) / n if n else None

    def indices_to_codes(self, indices: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """Codes for ``indices`` (B, *spatial) in the layer's output layout (B, D, *spatial):
        exactly what ``forward`` returned as ``quantized`` for inputs of ``dtype`` (default fp32)
        that chose these indices."""
        check_indices(indices, self.codebook_size)
        grid = tuple(indices.shape)
        with torch.autocast(device_type=indices.device.type, enabled=False):
            q = self.grid_points(indices.reshape(-1))  # (N, d)
            out = self._unflatten(self.project(self.project_out, q), grid)
        return out if dtype is None else out.to(dtype)
