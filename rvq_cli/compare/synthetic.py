"""The paper's synthetic problems, as pure seeded functions returning named results.

- :func:`himmelblau`      A.2 / Figure 8: 2-D points quantized by an EMA codebook, minimising
                          Himmelblau's function at the quantized points.
- :func:`voronoi`         §4.3 / A.10.5 / Figure 4: a fixed codebook, clustered points and one
                          fixed gradient per Voronoi region, 25 updates.
- :func:`gradient_field`  Figure 2 / Figure 14: the gradient each estimator sends to e over a grid.
- :func:`seeds_summary`   mean ± std of Himmelblau's final loss and distortion over seeds.

Every gradient to a point goes through the real estimator (``get_estimator(name)``) by autograd.
All simulations run in float64 (the estimators keep fp64), so invariants hold to ~1e-12.
No plotting here: the figures are drawn by synthetic_report (matplotlib's object API).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from rvq_cli.quantize.estimators import Estimator, get_estimator

__all__ = [
    "FieldResult",
    "HimmelblauResult",
    "SeedSummary",
    "Snapshot",
    "VoronoiResult",
    "field_codes",
    "grad_himmelblau",
    "grad_log_tanh",
    "grad_quadratic",
    "gradient_field",
    "himmelblau",
    "himmelblau_f",
    "himmelblau_init",
    "log_tanh",
    "quadratic",
    "seeds_summary",
    "voronoi",
]

EstimatorLike = str | Estimator | Callable[[Tensor, Tensor], Tensor]
DTYPE = torch.float64


def _resolve(estimator: EstimatorLike) -> tuple[str, Callable[[Tensor, Tensor], Tensor]]:
    """(name, callable) from a registry name or an estimator callable."""
    if isinstance(estimator, str):
        est = get_estimator(estimator)
        return est.name, est
    return getattr(estimator, "name", getattr(estimator, "__name__", "custom")), estimator


@contextlib.contextmanager
def _seeded(seed: int):
    """torch's global generator seeded for an estimator that draws noise (diveq), restored after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _nearest(e: Tensor, codes: Tensor) -> Tensor:
    """Index of the nearest code (Euclidean) for each row of e: (N, D), (K, D) -> (N,)."""
    return ((e[:, None, :] - codes[None, :, :]) ** 2).sum(-1).argmin(-1)  # (N, K) -> (N,)


# --------------------------------------------------------------------------------------------
# Test functions and their closed-form gradients (Figure 2, Figure 7)
# --------------------------------------------------------------------------------------------


def himmelblau_f(xy: Tensor) -> Tensor:
    """Himmelblau's function f(x, y) = (x² + y − 11)² + (x + y² − 7)² on (..., 2) -> (...)."""
    x, y = xy[..., 0], xy[..., 1]
    return (x**2 + y - 11) ** 2 + (x + y**2 - 7) ** 2


def grad_himmelblau(xy: Tensor) -> Tensor:
    """∇f of Himmelblau's function, closed form: (..., 2) -> (..., 2)."""
    x, y = xy[..., 0], xy[..., 1]
    a, b = x**2 + y - 11, x + y**2 - 7
    return torch.stack([4 * x * a + 2 * b, 2 * a + 4 * y * b], -1)


def quadratic(xy: Tensor) -> Tensor:
    """f(x, y) = x² + y² (Figure 2, top)."""
    return (xy**2).sum(-1)


def grad_quadratic(xy: Tensor) -> Tensor:
    """∇(x² + y²) = (2x, 2y)."""
    return 2 * xy


def log_tanh(xy: Tensor) -> Tensor:
    """f(x, y) = log|x/2 + tanh(y)| (Figure 2, bottom)."""
    return torch.log(torch.abs(0.5 * xy[..., 0] + torch.tanh(xy[..., 1])))


def grad_log_tanh(xy: Tensor) -> Tensor:
    """∇ log|x/2 + tanh y| = (1/2, 1 − tanh² y) / (x/2 + tanh y)."""
    s = 0.5 * xy[..., 0] + torch.tanh(xy[..., 1])
    return torch.stack([0.5 / s, (1 - torch.tanh(xy[..., 1]) ** 2) / s], -1)


# --------------------------------------------------------------------------------------------
# Himmelblau (A.2, Figure 8)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """Points (N, 2) and codes (K, 2) after ``step`` updates."""

    step: int
    points: np.ndarray
    codes: np.ndarray


@dataclass(frozen=True)
class HimmelblauResult:
    """One Himmelblau run. ``loss[t]`` / ``distortion[t]`` are measured after t updates
    (t = 0 is the start), so each has ``steps + 1`` entries."""

    estimator: str
    seed: int
    loss: np.ndarray  # (steps + 1,) mean f(Q(e)) over points
    distortion: np.ndarray  # (steps + 1,) mean ‖e − Q(e)‖²
    init_points: np.ndarray  # (N, 2)
    init_codes: np.ndarray  # (K, 2)
    snapshots: dict[int, Snapshot] = field(repr=False)

    @property
    def final_loss(self) -> float:
        return float(self.loss[-1])

    @property
    def final_distortion(self) -> float:
        return float(self.distortion[-1])


def himmelblau_init(seed: int, points: int = 500, codes: int = 16, box: float = 5.0) -> tuple[Tensor, Tensor]:
    """The shared random start: points and codes uniform in [−box, box]² (A.2 is silent on this).
    Depends only on the seed and sizes, never on the estimator."""
    gen = torch.Generator().manual_seed(seed)
    e = (torch.rand(points, 2, generator=gen, dtype=DTYPE) * 2 - 1) * box  # (N, 2)
    c = (torch.rand(codes, 2, generator=gen, dtype=DTYPE) * 2 - 1) * box  # (K, 2)
    return e, c


@torch.no_grad()
def _measure(e: Tensor, codes: Tensor) -> tuple[float, float]:
    """(mean f(Q(e)), mean ‖e − Q(e)‖²) with the current codebook."""
    q = codes[_nearest(e, codes)]
    return float(himmelblau_f(q).mean()), float(((e - q) ** 2).sum(-1).mean())


@torch.no_grad()
def _ema_update(e: Tensor, idx: Tensor, size: Tensor, total: Tensor, decay: float, eps: float = 1e-5) -> Tensor:
    """EMA codebook (van den Oord et al. 2017, App. A.1), in place on ``size`` (K,) and ``total`` (K, 2);
    returns the new codes. A code with no points keeps its value (size and total decay together)."""
    onehot = torch.nn.functional.one_hot(idx, size.shape[0]).to(e.dtype)  # (N, K)
    size.mul_(decay).add_(onehot.sum(0), alpha=1 - decay)
    total.mul_(decay).add_(onehot.T @ e, alpha=1 - decay)
    return total / size.clamp_min(eps)[:, None]


def himmelblau(
    estimator: EstimatorLike,
    *,
    seed: int,
    points: int = 500,
    codes: int = 16,
    steps: int = 100,
    lr: float = 1e-3,
    decay: float = 0.8,
    optimizer: str = "sgd",
    box: float = 5.0,
    snapshot_steps: Sequence[int] = (33, 66, 100),
) -> HimmelblauResult:
    """VQ minimising Himmelblau's function at the quantized points (A.2, Figure 8).

    Each update: q = Q(e) with the current codes; the loss Σᵢ f(q̃ᵢ), q̃ = estimator(e, q), sends
    each point the estimator's transport of ∇f(qᵢ); the optimizer steps the points with ``lr``;
    then the codebook takes one EMA step (decay 0.8) toward the mean of the points it was
    assigned (the pre-step points, as in VQ-VAE training).

    From the paper: EMA decay 0.8, lr 1e-3, 100 updates, the same random start for every
    estimator. Chosen here (A.2 is silent): 500 points and 16 codes, both uniform in [−5, 5]²
    (seeded, estimator-independent); the loss is the *sum* over points (each point gets
    ∇f(q) itself, not ∇f(q)/N, which with lr 1e-3 would barely move anything); no commitment
    loss; plain SGD by default ("adam" is offered); EMA state starts at size 1, total = code.
    """
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"decay must be in [0, 1), got {decay!r}")
    name, est = _resolve(estimator)
    e0, c0 = himmelblau_init(seed, points, codes, box)
    e = e0.clone().requires_grad_(True)
    cb = c0.clone()
    size, total = torch.ones(codes, dtype=DTYPE), c0.clone()  # EMA state
    opt = (torch.optim.SGD if optimizer == "sgd" else torch.optim.Adam)([e], lr=lr)
    l0, d0 = _measure(e0, cb)
    loss, dist = [l0], [d0]
    snaps: dict[int, Snapshot] = {}
    for t in range(1, steps + 1):
        idx = _nearest(e.detach(), cb)  # (N,)
        q = cb[idx]  # (N, 2), no gradient to the codebook through this path
        opt.zero_grad(set_to_none=True)
        with _seeded(seed * 1_000 + t):  # diveq's noise: the same draws for every run of this seed
            himmelblau_f(est(e, q)).sum().backward()
        e_before = e.detach().clone()
        opt.step()
        cb = _ema_update(e_before, idx, size, total, decay)
        loss_t, d = _measure(e.detach(), cb)
        loss.append(loss_t)
        dist.append(d)
        if t in snapshot_steps:
            snaps[t] = Snapshot(t, e.detach().numpy().copy(), cb.numpy().copy())
    return HimmelblauResult(name, seed, np.array(loss), np.array(dist), e0.numpy(), c0.numpy(), snaps)


@dataclass(frozen=True)
class SeedSummary:
    """Final Himmelblau loss and distortion over seeds: mean and sample std (ddof = 1)."""

    estimator: str
    seeds: tuple[int, ...]
    loss_mean: float
    loss_std: float
    distortion_mean: float
    distortion_std: float

    def __str__(self) -> str:
        return (f"{self.estimator}: loss {self.loss_mean:.4g} ± {self.loss_std:.2g}, distortion "
                f"{self.distortion_mean:.4g} ± {self.distortion_std:.2g} over {len(self.seeds)} seeds")


def seeds_summary(results: Sequence[HimmelblauResult]) -> dict[str, SeedSummary]:
    """Group runs by estimator and report mean ± std (ddof = 1) of the final loss and distortion.
    Each estimator needs at least two seeds, all distinct."""
    by_est: dict[str, list[HimmelblauResult]] = {}
    for r in results:
        by_est.setdefault(r.estimator, []).append(r)
    out = {}
    for name, rs in by_est.items():
        seeds = tuple(r.seed for r in rs)
        if len(rs) < 2 or len(set(seeds)) != len(seeds):
            raise ValueError(f"{name}: need ≥ 2 runs with distinct seeds, got seeds {seeds}")
        loss = np.array([r.final_loss for r in rs])
        dist = np.array([r.final_distortion for r in rs])
        out[name] = SeedSummary(name, seeds, float(loss.mean()), float(loss.std(ddof=1)),
                                float(dist.mean()), float(dist.std(ddof=1)))
    return out


# --------------------------------------------------------------------------------------------
# Voronoi partition analysis (§4.3, A.10.5, Figure 4)
# --------------------------------------------------------------------------------------------

# Figure 4's layout as read from the figure (A.10.5 gives no numbers): a top-right and a
# top-left code, and one at the bottom. Sign: here the update is e ← e − lr·grad_e, whereas
# A.10.5 "applies" lr·g; so g_k below is chosen so the *update* −lr·g_k at the code points
# outward for the top-right "push" region, along the boundary (⟂ q) for top-left, and toward
# the origin for the bottom "pull" region. lr·‖g‖ is kept small enough that no point reaches
# the origin in 25 updates (the rotation trick's λ = ‖q‖/‖e‖ grows without bound there).
VORONOI_CODES = ((3.0, 3.0), (-3.0, 3.0), (0.0, -4.0))
VORONOI_GRADS = ((-math.sqrt(0.5), -math.sqrt(0.5)), (math.sqrt(0.5), math.sqrt(0.5)), (0.0, -1.0))


@dataclass(frozen=True)
class VoronoiResult:
    """Trajectories under fixed per-region gradients. ``points[t]`` is after t updates."""

    estimator: str
    codes: np.ndarray  # (K, 2), fixed
    region_grads: np.ndarray  # (K, 2): g_k, the gradient at code k
    region: np.ndarray  # (N,) region of each point, fixed at the start (A.10.5)
    points: np.ndarray  # (steps + 1, N, 2)
    grads: np.ndarray  # (steps, N, 2): gradient the estimator sent to each point at each update
    lr: float


def voronoi_points(seed: int, per_cluster: int = 15, spread: float = 0.15) -> tuple[Tensor, Tensor]:
    """Clustered points and their fixed region (A.10.5): four Gaussian clusters in the top-right
    and bottom regions, a crescent around the top-left code. Returns (N, 2) and (N,)."""
    gen = torch.Generator().manual_seed(seed)
    codes = torch.tensor(VORONOI_CODES, dtype=DTYPE)
    pts = []
    for k in (0, 2):  # four Gaussians per region, centres around the code
        ang = torch.arange(4, dtype=DTYPE) * (math.pi / 2) + math.pi / 4
        centres = codes[k] + 0.8 * torch.stack([ang.cos(), ang.sin()], -1)  # (4, 2)
        noise = torch.randn(4, per_cluster, 2, generator=gen, dtype=DTYPE) * spread
        pts.append((centres[:, None] + noise).reshape(-1, 2))
    arc = torch.linspace(0.25 * math.pi, 1.25 * math.pi, 4 * per_cluster, dtype=DTYPE)  # crescent
    rad = 0.9 + 0.05 * torch.randn(arc.shape, generator=gen, dtype=DTYPE)
    pts.append(codes[1] + rad[:, None] * torch.stack([arc.cos(), arc.sin()], -1))
    e = torch.cat(pts)  # (N, 2)
    return e, _nearest(e, codes)


def voronoi(
    estimator: EstimatorLike,
    *,
    seed: int = 0,
    steps: int = 25,
    lr: float = 0.03,
    codes: Sequence[Sequence[float]] = VORONOI_CODES,
    region_grads: Sequence[Sequence[float]] = VORONOI_GRADS,
    points: Tensor | np.ndarray | None = None,
) -> VoronoiResult:
    """§4.3 / A.10.5: with a FIXED codebook and one fixed gradient g_k per region, each point
    takes ``steps`` updates e ← e − lr·grad_e, grad_e being g_k moved to e by the estimator
    (recomputed at every update from the point's current position). Regions are assigned once
    at the start and never recomputed, as in A.10.5. ``points`` overrides the clustered start
    (then ``codes`` must match); the default uses :func:`voronoi_points` (seeded)."""
    name, est = _resolve(estimator)
    c = torch.as_tensor(np.asarray(codes, dtype=np.float64))  # (K, 2)
    g = torch.as_tensor(np.asarray(region_grads, dtype=np.float64))  # (K, 2)
    if c.shape != g.shape:
        raise ValueError(f"codes {tuple(c.shape)} and region_grads {tuple(g.shape)} must have the same shape")
    if points is None:
        if c.shape != (len(VORONOI_CODES), 2) or not torch.equal(c, torch.tensor(VORONOI_CODES, dtype=DTYPE)):
            raise ValueError("custom codes need explicit points")
        e, region = voronoi_points(seed)
    else:
        e = torch.as_tensor(np.asarray(points, dtype=np.float64))
        region = _nearest(e, c)
    q, gk = c[region], g[region]  # (N, 2) each
    traj, grads = [e.clone()], []
    for t in range(steps):
        e_ = e.clone().requires_grad_(True)
        with _seeded(seed * 1_000 + t):
            (est(e_, q) * gk).sum().backward()  # linear loss: dL/dq̃ = g_k
        grads.append(e_.grad.detach().clone())
        e = e - lr * e_.grad.detach()
        traj.append(e.clone())
    return VoronoiResult(name, c.numpy(), g.numpy(), region.numpy(),
                         torch.stack(traj).numpy(), torch.stack(grads).numpy(), lr)


# --------------------------------------------------------------------------------------------
# Gradient fields (Figure 2, Figure 14)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldResult:
    """The gradient an estimator sends to each grid point e (Figure 2 / 14)."""

    estimator: str
    grid: np.ndarray  # (M, 2) grid points e
    codes: np.ndarray  # (K, 2)
    index: np.ndarray  # (M,) nearest code
    grad_q: np.ndarray  # (M, 2) ∇f(q) at each point's code (by autograd through f)
    grad_e: np.ndarray  # (M, 2) the estimator's gradient to e
    exact: np.ndarray  # (M, 2) ∇f(e), the field without quantization


def field_codes(codes: int = 16, extent: float = 4.0) -> Tensor:
    """Codes on a regular √K × √K lattice, cell centres of [−extent, extent]²: for 16 codes,
    {−3, −1, 1, 3}². Figure 2's 16 codes are read as such a lattice (the paper gives no values);
    it keeps every code off the origin and off the singular line x/2 + tanh y = 0."""
    n = math.isqrt(codes)
    if n * n != codes:
        raise ValueError(f"codes must be a perfect square (a √K × √K lattice), got {codes}")
    ax = (torch.arange(n, dtype=DTYPE) + 0.5) * (2 * extent / n) - extent
    return torch.cartesian_prod(ax, ax)  # (K, 2)


def gradient_field(
    estimator: EstimatorLike,
    f: Callable[[Tensor], Tensor],
    *,
    codes: int | Tensor | np.ndarray = 16,
    grid: int = 24,
    extent: float = 4.0,
) -> FieldResult:
    """For each of grid × grid points e in [−extent, extent]² (an even ``grid`` keeps the origin
    off the grid), q = nearest code, and grad_e = d f(estimator(e, q)) / de by autograd: the real
    estimator's transport of ∇f(q) to e. ``codes`` is a count (see :func:`field_codes`) or (K, 2)."""
    name, est = _resolve(estimator)
    c = field_codes(codes, extent) if isinstance(codes, int) else torch.as_tensor(np.asarray(codes, dtype=np.float64))
    ax = torch.linspace(-extent, extent, grid, dtype=DTYPE)
    e = torch.cartesian_prod(ax, ax)  # (grid², 2)
    idx = _nearest(e, c)
    q = c[idx].clone().requires_grad_(True)
    (grad_q,) = torch.autograd.grad(f(q).sum(), q)
    e_ = e.clone().requires_grad_(True)
    with _seeded(0):
        (grad_e,) = torch.autograd.grad(f(est(e_, q.detach())).sum(), e_)
    e_x = e.clone().requires_grad_(True)
    (exact,) = torch.autograd.grad(f(e_x).sum(), e_x)
    return FieldResult(name, e.numpy(), c.numpy(), idx.numpy(), grad_q.numpy(), grad_e.numpy(), exact.numpy())
