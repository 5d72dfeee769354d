"""How the K codes are made from what the layer stores (``codebook``: plain, simvq, affine).

The lookup, the losses, the estimator and the decoder all use the codes this gives, so every
estimator acts at the code exactly as with a plain codebook. Notation: c_k the stored vectors,
e the latents in code space (N, d).

- ``plain``: the codes are the stored c_k. No state of its own: a plain layer's state dict is
  what it always was.
- ``simvq`` (Zhu et al. 2024, "Addressing Representation Collapse in Vector Quantized Models with
  One Linear Layer", arXiv 2411.02038): a frozen random basis C (K, d), drawn N(0, 1/d) and never
  trained (the ``codebook`` buffer), times one learned linear map W (d, d) without bias:
  codes = C Wᵀ (a row c_k ↦ W c_k, nn.Linear's orientation; vector-quantize-pytorch's ``SimVQ``
  has the same basis, the same map and W's nn.Linear init U(−1/√d, 1/√d)). Every code moves when
  W moves, so a code the encoder never picks still follows the latents. W learns from the codebook
  term ‖sg(e) − q‖², which needs ``update="learned"``; the paper's loss is the VQ-VAE one,
  ‖sg(e) − q‖² + β‖e − sg(q)‖² (β = 0.25 in its code: ``vq_loss="vqvae"``, ``beta=0.25``).
- ``affine`` (Huh et al. 2023, "Straightening Out the Straight-Through Estimator: Overcoming
  Optimization Challenges in Vector Quantized Networks", ICML): one shift and scale shared by all
  codes, which move the whole codebook onto the latents' distribution. As vector-quantize-pytorch's
  ``affine_param=True``, they come from running statistics, per channel:
  μ_c, σ²_c the mean and (biased) variance over the K stored codes, μ_b, σ²_b those of the batch
  of latents, each a moving average (decays ``codebook_decay`` 0.9 and ``batch_decay`` 0.99; the
  first training step sets them), and

      code_k = (c_k − μ_c) · σ_b/σ_c + μ_b,   σ = sqrt(max(σ², 1e-5)).

  The statistics are updated at the start of every training forward, before the lookup. An EMA
  codebook accumulates the latents mapped back into the stored space,
  (e − μ_b) · σ_c/σ_b + μ_c; a learned one gets its gradient through the map. With ``sync`` (rvq's
  default) μ_b and σ²_b are over every process's batch (two all-reduces), so all ranks keep the
  same codes. Before the first training step the map is the identity (μ = 0, σ² = 1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import codebook as cb

__all__ = ["AFFINE_VAR_FLOOR", "CODEBOOKS", "Affine", "Plain", "SimVQ", "build_parameterisation", "initial_codes",
           "simvq_basis"]

CODEBOOKS = ("plain", "simvq", "affine")
# what `rvq estimators` says of the codebook parameterisations and of FSQ: (recipe setting, what it is, paper)
QUANTIZER_VARIANTS = (
    ("codebook: simvq", "a frozen random basis C times one learned linear map W: codes C Wᵀ (update: learned); "
     "combines with any estimator", "Zhu et al. 2024 (arXiv 2411.02038)"),
    ("codebook: affine", "the codes shifted and scaled onto the latents' running mean and standard deviation; "
     "combines with any estimator", "Huh et al., ICML 2023"),
    ("kind: fsq, levels: [...]", "no codebook: each channel bounded and rounded to its levels, an implicit grid "
     "of ∏ levels codes; straight-through", "Mentzer et al. 2023 (arXiv 2309.15505)"),
)
AFFINE_VAR_FLOOR = 1e-5  # σ = sqrt(max(σ², floor)), as vector-quantize-pytorch
DEFAULT_INIT = "kaiming_uniform"  # the layer's default init


class Plain:
    """The stored codes as they are (no module, no state)."""

    name = "plain"
    frozen = False  # whether the stored codebook is a fixed basis rather than the trained codes

    def codes(self, c: Tensor) -> Tensor:
        return c

    def observe(self, e: Tensor, c: Tensor) -> None:
        """Training forward: see the batch's latents ``e`` (N, d) and the stored codes ``c`` (K, d)."""

    def to_stored(self, e: Tensor) -> Tensor:
        """Latents in code space -> the space the stored codebook lives in (EMA sums, restarts)."""
        return e


class SimVQ(nn.Module):
    """SimVQ's learned map W (d, d): codes = C Wᵀ for the frozen basis C the layer stores."""

    name = "simvq"
    frozen = True

    def __init__(self, dim: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(dim)  # nn.Linear's default init (kaiming_uniform_, a = √5), as upstream
        self.weight = nn.Parameter(torch.empty(dim, dim).uniform_(-bound, bound))

    def extra_repr(self) -> str:
        return f"dim={self.weight.shape[0]}"

    def codes(self, c: Tensor) -> Tensor:
        return F.linear(c, self.weight.float())  # (K, d) @ Wᵀ, in fp32

    def observe(self, e: Tensor, c: Tensor) -> None:
        pass

    def to_stored(self, e: Tensor) -> Tensor:
        raise AssertionError("SimVQ's basis is frozen: nothing writes latents into it")


def simvq_basis(num_codes: int, dim: int, generator: torch.Generator | None = None) -> Tensor:
    """SimVQ's frozen basis C (K, d) ~ N(0, 1/d), as the paper's code and vector-quantize-pytorch."""
    return torch.randn(num_codes, dim, generator=generator) * dim**-0.5


class Affine(nn.Module):
    """Huh et al.'s affine reparameterisation from running statistics (see the module docstring).
    Buffers (d,) each, in the state dict: ``batch_mean``, ``batch_variance``, ``codebook_mean``,
    ``codebook_variance``, and ``initialized`` (whether a training step has set them)."""

    name = "affine"
    frozen = False

    def __init__(self, dim: int, batch_decay: float = 0.99, codebook_decay: float = 0.9, sync: bool = True) -> None:
        super().__init__()
        for what, decay in (("affine_batch_decay", batch_decay), ("affine_codebook_decay", codebook_decay)):
            if not 0.0 <= decay < 1.0:
                raise ValueError(f"{what} must be in [0, 1), got {decay}")
        self.batch_decay, self.codebook_decay, self.sync = float(batch_decay), float(codebook_decay), bool(sync)
        for side in ("batch", "codebook"):  # mean 0, variance 1: the identity map until the first step
            self.register_buffer(f"{side}_mean", torch.zeros(dim))
            self.register_buffer(f"{side}_variance", torch.ones(dim))
        self.register_buffer("initialized", torch.tensor(False))

    def extra_repr(self) -> str:
        return f"batch_decay={self.batch_decay}, codebook_decay={self.codebook_decay}, sync={self.sync}"

    def _apply(self, fn, recurse=True):
        """Casting the layer keeps the statistics in fp32 (DESIGN: quantizer math in fp32)."""
        super()._apply(fn, recurse)
        for name, buf in self._buffers.items():
            if buf is not None and buf.is_floating_point() and buf.dtype != torch.float32:
                self._buffers[name] = buf.float()
        return self

    def _stds(self) -> tuple[Tensor, Tensor]:
        floor = AFFINE_VAR_FLOOR
        return self.batch_variance.clamp(min=floor).sqrt(), self.codebook_variance.clamp(min=floor).sqrt()

    def codes(self, c: Tensor) -> Tensor:
        batch_std, codebook_std = self._stds()
        return (c - self.codebook_mean) * (batch_std / codebook_std) + self.batch_mean  # (K, d)

    def to_stored(self, e: Tensor) -> Tensor:
        batch_std, codebook_std = self._stds()
        return (e - self.batch_mean) * (codebook_std / batch_std) + self.codebook_mean  # (N, d)

    @torch.no_grad()
    def batch_statistics(self, e: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and biased variance per channel of the rows ``e`` (N, d): over every process's rows
        with ``sync`` (Σe and N in one all-reduce, then Σ(e − μ)² about the global mean in another)."""
        e = e.float()
        if not (self.sync and cb.is_distributed()):
            return e.mean(0), e.var(0, unbiased=False)
        first = torch.cat([e.sum(0), e.new_tensor([e.shape[0]])])  # [Σe (d) | N]
        cb.all_reduce_sum(first)
        mean = first[:-1] / first[-1]
        second = cb.all_reduce_sum(((e - mean) ** 2).sum(0))
        return mean, second / first[-1]

    @torch.no_grad()
    def observe(self, e: Tensor, c: Tensor) -> None:
        c = c.float()
        news = {"batch": self.batch_statistics(e), "codebook": (c.mean(0), c.var(0, unbiased=False))}
        first = not bool(self.initialized)
        for side, decay in (("batch", self.batch_decay), ("codebook", self.codebook_decay)):
            for buf, new in zip((getattr(self, f"{side}_mean"), getattr(self, f"{side}_variance")), news[side]):
                buf.copy_(new if first else buf * decay + new * (1.0 - decay))  # upstream's update_with_decay
        self.initialized.fill_(True)


def initial_codes(kind: str, num_codes: int, dim: int, init: str) -> Tensor:
    """What the layer stores as ``codebook`` at construction: SimVQ's basis, else the ``init`` codes."""
    return simvq_basis(num_codes, dim) if kind == "simvq" else cb.init_codebook(num_codes, dim, init)


def build_parameterisation(kind: str, dim: int, *, update: str, lookup: str, init: str, dead_code_threshold: float,
                           batch_decay: float = 0.99, codebook_decay: float = 0.9,
                           sync: bool = True) -> Plain | SimVQ | Affine:
    """The ``codebook`` parameterisation of a layer with d = ``dim``, refusing what it cannot do."""
    if kind not in CODEBOOKS:
        raise ValueError(f"unknown codebook {kind!r}; valid: {', '.join(CODEBOOKS)}")
    if kind == "simvq":
        if update != "learned":
            raise ValueError("codebook 'simvq' keeps its basis frozen and learns the map W by gradient, so it needs "
                             f"update='learned' (an EMA update of a frozen basis is meaningless), got {update!r}")
        if init != DEFAULT_INIT:
            raise ValueError(f"codebook 'simvq' draws its frozen basis from N(0, 1/d); init {init!r} does not apply")
        if dead_code_threshold > 0:
            raise ValueError("codebook 'simvq' has no stored codes to restart (every code is C Wᵀ); "
                             "dead_code_threshold must be 0")
        return SimVQ(dim)
    if kind == "affine":
        if lookup != "euclidean":
            raise ValueError(f"codebook 'affine' shifts and scales the codes, so it needs lookup='euclidean' (as "
                             f"vector-quantize-pytorch's affine_param), got {lookup!r}")
        return Affine(dim, batch_decay, codebook_decay, sync)
    return Plain()
