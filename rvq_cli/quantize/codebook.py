"""Codebook operations: nearest-code search, EMA update, initialisation, dead-code restart.

Every collective the codebook needs lives in this file (:func:`all_reduce_sum`,
:func:`broadcast_from_rank0`), so ranks hold identical codebooks after every update: EMA
statistics are summed over ranks before they are applied, and anything drawn at random
(k-means seeds, restarted codes) is drawn on rank 0 and broadcast.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor

LOOKUPS = ("euclidean", "cosine")
INITS = ("kaiming_uniform", "normal", "uniform", "kmeans")

DEFAULT_CHUNK = 1 << 22  # elements of one block of the N×K score matrix (16 MiB in fp32)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(x: Tensor) -> Tensor:
    """Sum ``x`` over ranks in place (no-op in a single process)."""
    if is_distributed():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def broadcast_from_rank0(x: Tensor) -> Tensor:
    """Overwrite ``x`` with rank 0's copy in place (no-op in a single process)."""
    if is_distributed():
        dist.broadcast(x, src=0)
    return x


_F32_EPS = 2.0**-24


@torch.no_grad()
def nearest_codes(x: Tensor, codes: Tensor, lookup: str = "euclidean", chunk: int = DEFAULT_CHUNK) -> Tensor:
    """Index of the nearest code for every row of ``x`` (N, d) among ``codes`` (K, d).

    Euclidean: argmin ‖x − c‖²; cosine: argmax x·c, with x and codes already l2-normalised by
    the caller. Ties go to the lowest index. Scores are computed in blocks of at most ``chunk``
    entries of the N×K matrix (one matrix product each: ‖c‖² − 2x·c, or x·c), so peak memory is
    bounded whatever N and K are. A matrix product's rounding depends on the block's shape, so
    rows whose best scores are within that rounding of each other (near ties) are decided again
    from exact float64 distances of their candidate codes: the answer is the exact nearest code,
    the same for every block size and batch composition.
    """
    if lookup not in LOOKUPS:
        raise ValueError(f"unknown lookup {lookup!r}; valid: {', '.join(LOOKUPS)}")
    n, k = x.shape[0], codes.shape[0]
    rows = max(1, chunk // k)
    out = torch.empty(n, dtype=torch.long, device=x.device)
    c2 = (codes * codes).sum(-1)  # (K,)
    c_max = c2.max().sqrt()
    if lookup == "euclidean":  # [x, 1]·[−2c, ‖c‖²] = ‖c‖² − 2x·c in one product, no extra pass
        codes_t = torch.cat([-2.0 * codes, c2.unsqueeze(1)], dim=1).t()  # (d + 1, K)
    else:  # −x·c, so that smaller is better for both lookups
        codes_t = -codes.t()  # (d, K)
    ones = torch.ones(min(rows, n), 1, dtype=x.dtype, device=x.device)
    for i in range(0, n, rows):
        xb = x[i : i + rows]  # (rows, d)
        x_norm = xb.norm(dim=-1)  # (rows,)
        # bound on the rounding error of one score, |Σ_d| ≤ d·eps·Σ|terms| (generous constant)
        tol = 4.0 * (x.shape[1] + 2) * _F32_EPS * (c_max * c_max + 2.0 * x_norm * c_max)
        xa = torch.cat([xb, ones[: xb.shape[0]]], dim=1) if lookup == "euclidean" else xb
        scores = xa @ codes_t  # (rows, K)
        best, idx = scores.min(dim=1)
        thresh = best + tol
        if k > 1:  # a near tie: the runner-up is within rounding of the best
            scores.scatter_(1, idx.unsqueeze(1), float("inf"))
            ambiguous = scores.min(dim=1).values <= thresh  # (rows,)
            if bool(ambiguous.any()):
                amb = ambiguous.nonzero().squeeze(1)
                near = scores[amb] <= thresh[amb].unsqueeze(1)  # (M, K) runner-up candidates
                near.scatter_(1, idx[amb].unsqueeze(1), True)  # and the best itself
                idx[amb] = _exact_nearest(xb[amb], codes, near, lookup, chunk)
        out[i : i + rows] = idx
    return out


def _exact_nearest(x: Tensor, codes: Tensor, candidates: Tensor, lookup: str, chunk: int) -> Tensor:
    """Exact winner among each row's candidate codes (float64, lowest index on ties).
    ``candidates`` is (M, K) bool; work is done in pieces of at most ``chunk`` numbers."""
    row, code = candidates.nonzero(as_tuple=True)  # (P,) pairs, ordered by row then code
    score = torch.empty(row.numel(), dtype=torch.float64, device=x.device)
    step = max(1, chunk // max(1, x.shape[1]))
    for j in range(0, row.numel(), step):
        xr = x[row[j : j + step]].double()  # (p, d)
        cr = codes[code[j : j + step]].double()
        # smaller is better: squared distance, or minus the dot product for cosine
        score[j : j + step] = ((xr - cr) ** 2).sum(-1) if lookup == "euclidean" else -(xr * cr).sum(-1)
    m = x.shape[0]
    best = torch.full((m,), float("inf"), dtype=torch.float64, device=x.device)
    best.scatter_reduce_(0, row, score, reduce="amin")
    winner = torch.where(score == best[row], code, torch.full_like(code, codes.shape[0]))
    out = torch.full((m,), codes.shape[0], dtype=torch.long, device=x.device)
    return out.scatter_reduce_(0, row, winner, reduce="amin")


@torch.no_grad()
def init_codebook(num_codes: int, dim: int, method: str, generator: torch.Generator | None = None) -> Tensor:
    """A fresh (K, d) codebook. ``kaiming_uniform`` is vector-quantize-pytorch's default (and so the
    paper's Euclidean setting), ``uniform`` is taming-transformers' U(−1/K, 1/K), ``normal`` is N(0, 1).
    ``kmeans`` starts from zeros and is filled from the first training batch (:func:`kmeans`)."""
    if method == "kaiming_uniform":
        bound = math.sqrt(6.0 / (num_codes * dim))  # kaiming_uniform_ on (1, K, d): fan_in = K·d
        return torch.empty(num_codes, dim).uniform_(-bound, bound, generator=generator)
    if method == "normal":
        return torch.randn(num_codes, dim, generator=generator)
    if method == "uniform":
        return torch.empty(num_codes, dim).uniform_(-1.0 / num_codes, 1.0 / num_codes, generator=generator)
    if method == "kmeans":
        return torch.zeros(num_codes, dim)
    raise ValueError(f"unknown codebook init {method!r}; valid: {', '.join(INITS)}")


def _sample_rows(x: Tensor, count: int) -> Tensor:
    """``count`` rows of ``x`` drawn on rank 0 (without replacement when there are enough)."""
    if x.shape[0] >= count:
        idx = torch.randperm(x.shape[0], device=x.device)[:count]
    else:
        idx = torch.randint(0, x.shape[0], (count,), device=x.device)
    return broadcast_from_rank0(x[idx].contiguous())


def _normalize(x: Tensor) -> Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


@torch.no_grad()
def kmeans(x: Tensor, num_codes: int, iters: int, lookup: str = "euclidean") -> Tensor:
    """Lloyd's k-means over the rows of ``x`` gathered from every rank (sums are all-reduced).
    Centroids start from rows sampled on rank 0; an empty cluster keeps its centroid."""
    x = x.float()
    centroids = _sample_rows(x, num_codes)
    for _ in range(iters):
        idx = nearest_codes(x, centroids, lookup)
        stats = torch.zeros(num_codes, x.shape[1] + 1, device=x.device, dtype=x.dtype)
        stats[:, :-1].index_add_(0, idx, x)
        stats[:, -1] = torch.bincount(idx, minlength=num_codes).to(x.dtype)
        all_reduce_sum(stats)
        sums, counts = stats[:, :-1], stats[:, -1:]
        centroids = torch.where(counts > 0, sums / counts.clamp_min(1.0), centroids)
        if lookup == "cosine":
            centroids = _normalize(centroids)
    return centroids


@torch.no_grad()
def ema_update(
    codebook: Tensor, cluster_size: Tensor, embed_sum: Tensor, counts: Tensor, sums: Tensor, decay: float, eps: float
) -> None:
    """Exponential-moving-average codebook update of van den Oord et al. (2017), in place.

    ``counts`` (K,) and ``sums`` (K, d) are this step's assignments, already summed over ranks.
    Counts are Laplace-smoothed so a code that was never chosen keeps a finite vector:
    N_k ← γN_k + (1−γ)n_k,  m_k ← γm_k + (1−γ)Σx,  c_k = m_k / ((N_k + ε)/(ΣN + Kε) · ΣN).
    """
    cluster_size.mul_(decay).add_(counts, alpha=1.0 - decay)
    embed_sum.mul_(decay).add_(sums, alpha=1.0 - decay)
    total = cluster_size.sum()
    smoothed = (cluster_size + eps) / (total + cluster_size.numel() * eps) * total
    codebook.copy_(embed_sum / smoothed.unsqueeze(1))


@torch.no_grad()
def restart_dead_codes(
    codebook: Tensor, cluster_size: Tensor, embed_sum: Tensor | None, x: Tensor, threshold: float
) -> int:
    """Replace codes whose EMA usage fell below ``threshold`` with vectors of this batch, drawn on
    rank 0 and broadcast. The restarted codes get usage ``threshold`` so they are not restarted
    again at once. Returns how many codes were restarted (the same on every rank)."""
    dead = cluster_size < threshold
    num_dead = int(dead.sum())
    if num_dead == 0:
        return 0
    fresh = _sample_rows(x.float(), num_dead).to(codebook.dtype)
    codebook[dead] = fresh
    cluster_size[dead] = threshold
    if embed_sum is not None:
        embed_sum[dead] = fresh * threshold
    return num_dead


def codebook_fingerprint(codebook: Tensor) -> Tensor:
    """Cheap summary of a codebook (sum and sum of squares, fp64) to compare across ranks."""
    c = codebook.detach().double()
    return torch.stack([c.sum(), (c * c).sum()])
