"""The vector-quantization layer: lookup, codebook update, estimator, losses and metrics."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import codebook as cb
from .estimators import ESTIMATORS, Found, GammaLike, Quantized, get_estimator
from .estimators.diveq import DIVEQ_NOISE_STD
from .estimators.gumbel import GUMBEL_LOGITS, GUMBEL_SAMPLES, GUMBEL_TEMPERATURE, cosine_anneal, logit_projection
from .estimators.ibq import IBQ_LOGITS
from .parameterisations import build_parameterisation, initial_codes
from .rows import check_indices, from_rows, project_fp32, to_rows

UPDATES = ("ema", "learned")


class _Renormalize(torch.autograd.Function):
    """x/‖x‖ for rows x that are already unit vectors (codes of a cosine lookup): the value is
    returned as it is (bit for bit: a recomputed norm may differ from 1 in the last place), the
    gradient is the normalisation's Jacobian, (I − x̂x̂ᵀ)g/‖x‖."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g: Tensor):
        (x,) = ctx.saved_tensors
        n = x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        xh = x / n
        return (g - xh * (xh * g).sum(-1, keepdim=True)) / n


COSINE_OUTPUTS = ("as_is", "renormalize")
VQ_LOSSES = ("vqvae", "taming_legacy")
EMA_COUNTS = ("ones", "zeros")
COSINE_INITS = ("unit", "as_drawn")


@dataclass
class QuantizeLosses:
    """Loss terms of the layer, already weighted: add ``total`` to the training loss."""

    commitment: Tensor  # β · mean (e − sg(q))² (vq_loss "taming_legacy": weight 1)
    codebook: Tensor  # mean (sg(e) − q)² for a learned codebook (taming_legacy: × β), 0 with EMA updates
    prior: Tensor  # gumbel: KL(softmax(logits) ‖ uniform), mean over rows, × the KL weight now; 0 otherwise

    @property
    def total(self) -> Tensor:
        return self.commitment + self.codebook + self.prior


@dataclass
class QuantizeMetrics:
    """Batch statistics (0-dim tensors, no gradient). In training under torch.distributed they
    are computed from the assignments of every rank."""

    usage: Tensor  # fraction of the K codes chosen at least once in the batch
    perplexity: Tensor  # exp(entropy) of the batch's code distribution
    quant_error: Tensor  # mean over elements of (e − q)², in code space
    fallbacks: Tensor  # rows that took the estimator's degenerate-row fallback
    restarted: Tensor  # dead codes restarted in this step
    obtuse: Tensor  # fraction of rows whose angle between e and q exceeds 90° (e·q < 0; the paper's §6 limitation)
    latent_power: Tensor  # mean over elements of e², in code space: quant_error / latent_power is scale-free

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in vars(self).items()}


@dataclass
class QuantizeOutput:
    quantized: Tensor  # (B, D, *spatial), same layout and dtype as the input
    indices: Tensor  # (B, *spatial), int64
    losses: QuantizeLosses
    metrics: QuantizeMetrics
    # Loss-level estimators in training (their training_loss hook completes the gradient):
    decoder_input: Tensor | None = None  # hessian, exact: the leaf q (N, d) the decoder reads; dL/d it is g
    latents: Tensor | None = None  # hessian: e (N, d), the encoder output in code space, with its graph
    passthrough: Tensor | None = None  # exact: e itself in the layout of ``quantized`` (no quantization),
    #                                    its gradient scaled by 1/ε on the way back to the encoder

    @property
    def loss(self) -> Tensor:
        return self.losses.total


def _choice(name: str, value: str, valid: tuple[str, ...]) -> str:
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")
    return value


class VectorQuantizer(nn.Module):
    """Nearest-neighbour vector quantizer with a selectable gradient estimator.

    Args:
        dim: channels D of the input (B, D, *spatial).
        codebook_size: number of codes K.
        estimator: name in :data:`ESTIMATORS` ("rotation" is the paper's default).
        gamma: γ(e) of the rotation family (A.9.2), only with ``estimator="rotation"``.
        lookup: "euclidean", or "cosine" (inputs and codes l2-normalised, as in ViT-VQGAN).
        update: "ema" (moving averages, no gradient to the codebook) or "learned" (codebook loss).
        decay, eps: EMA decay (paper: 0.8) and Laplace smoothing.
        beta: commitment weight β.
        codebook_dim: code dimension d; when it differs from D, linear projections D→d→D
            factorise the codes (ViT-VQGAN).
        init: "kaiming_uniform", "normal", "uniform" or "kmeans" (k-means on the first
            training batch, over all ranks, ``kmeans_iters`` iterations).
        dead_code_threshold: restart codes whose EMA usage count falls below this (0: never).
        chunk: elements per block of the nearest-code search (bounds its peak memory).
        epsilon: the ``exact`` estimator's ε (§3): L = L_q + ε L_e.
        codebook: how the codes are made (:mod:`.parameterisations`): "plain" (the stored codes),
            "simvq" (frozen basis C times a learned map W, codes C Wᵀ; needs update="learned") or
            "affine" (Huh et al.'s running-statistics shift and scale: ``affine_batch_decay``,
            ``affine_codebook_decay``, ``affine_sync``).
        diveq_noise_std: the ``diveq`` estimator's σ, the standard deviation of the noise on the
            direction of its simulated distortion.
        ibq_logits, ibq_entropy_weight, ibq_entropy_temperature: the ``ibq`` estimator's logits
            ("dot": e·c as upstream, or "distance": −‖e − c‖²) and its optional entropy term.
        temperature: the ``gumbel`` estimator's (start, end) temperature; :meth:`anneal` moves
            between them along a cosine ramp as training progresses.
        temperature_steps: ``gumbel``: optimizer steps of that ramp, then constant at the end
            (None: the whole run, the paper's A.10.1; karpathy/deep-vector-quantization: 150,000).
        kl_weight: the ``gumbel`` estimator's weight on KL(softmax(logits) ‖ uniform).
        kl_warmup_steps: ``gumbel``: 0 holds ``kl_weight`` from the first step; N > 0 ramps it
            from 0 along the same cosine over the first N optimizer steps (karpathy's RampBeta).
        gumbel_sample: ``gumbel`` in training: "soft" decodes the relaxed sample (karpathy's
            default), "hard" its one-hot with the relaxed sample's gradient (straight-through
            Gumbel-softmax, taming-transformers' GumbelVQ).
        gumbel_logits: ``gumbel``'s logits: "distance" (−‖e − c_k‖²: the sample is near the
            nearest code; commitment and codebook terms as for every estimator) or "linear"
            (a learned Linear(D, K) with bias on the layer's input, karpathy's 1×1 conv; the
            reported index is the argmax of the logits, and there is no commitment or codebook
            term: the codebook learns through the mixture, so it needs ``update="learned"``).
        ema_counts: initial EMA code counts, "ones" or "zeros" (vector-quantize-pytorch as the
            official Table 1 code vendors it: a code not chosen in the first update jumps far out,
            its sum over a smoothed count of ~eps, then shrinks by the decay every update).
        vq_loss: where β goes: "vqvae" (β·commitment + codebook term, van den Oord et al.) or
            "taming_legacy" (commitment + β·codebook term: taming-transformers' VectorQuantizer2
            with legacy=True, which the VQGAN rows of Tables 2, 3 and 7 ran).
        cosine_output: cosine lookup only: "as_is", or "renormalize" (the official Table 1 code
            l2-normalises the estimator's output again: same value, and the gradient is projected
            at q, which changes the STE's gradient and leaves the rotation trick's unchanged).
        cosine_init: cosine lookup only: the initial codes are stored as unit vectors ("unit"),
            or "as_drawn" (ViT-VQGAN's enhancing-transformers code keeps its N(0, 1) codes of norm
            ≈ √d and normalises them only at lookup; a learned codebook's Adam steps then turn
            the codes by angles about √d times smaller).

    Loss-level and stochastic estimators (see :data:`ESTIMATORS`): ``hessian`` and ``exact``
    send no gradient to e through the decoder path by themselves; in training their output holds
    ``decoder_input``/``latents``/``passthrough`` and the estimator's ``training_loss`` hook
    completes the gradient. ``gumbel`` feeds the decoder a Gumbel-softmax mixture of codes in training
    and, at eval, the code of the index it reports: the nearest code (distance logits) or the
    argmax of the logits (linear), hard.
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        estimator: str = "rotation",
        lookup: str = "euclidean",
        update: str = "ema",
        decay: float = 0.8,
        beta: float = 1.0,
        *,
        gamma: GammaLike | None = None,
        eps: float = 1e-5,
        codebook_dim: int | None = None,
        init: str = "kaiming_uniform",
        kmeans_iters: int = 10,
        dead_code_threshold: float = 0.0,
        chunk: int = cb.DEFAULT_CHUNK,
        epsilon: float = 1e-6,
        temperature: tuple[float, float] = GUMBEL_TEMPERATURE,
        kl_weight: float = 5e-4,
        ema_counts: str = "ones",
        cosine_output: str = "as_is",
        vq_loss: str = "vqvae",
        cosine_init: str = "unit",
        gumbel_logits: str = "distance",
        kl_warmup_steps: int = 0,
        temperature_steps: int | None = None,
        gumbel_sample: str = "soft",
        diveq_noise_std: float = DIVEQ_NOISE_STD,
        ibq_logits: str = "dot",
        ibq_entropy_weight: float = 0.0,
        ibq_entropy_temperature: float = 0.01,
        codebook: str = "plain",
        affine_batch_decay: float = 0.99,
        affine_codebook_decay: float = 0.9,
        affine_sync: bool = True,
    ) -> None:
        super().__init__()
        if dim < 1 or codebook_size < 2:
            raise ValueError(f"need dim >= 1 and codebook_size >= 2, got dim={dim}, codebook_size={codebook_size}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.estimator = get_estimator(estimator, gamma=gamma)
        self.lookup = _choice("lookup", lookup, cb.LOOKUPS)
        self.update = _choice("update", update, UPDATES)
        self.init = _choice("init", init, cb.INITS)
        self.dim, self.codebook_size = dim, codebook_size
        self.codebook_dim = codebook_dim or dim
        self.decay, self.eps, self.beta = decay, eps, beta
        self.kmeans_iters, self.dead_code_threshold, self.chunk = kmeans_iters, dead_code_threshold, chunk
        if not epsilon > 0:
            raise ValueError(f"epsilon must be > 0, got {epsilon}")
        self.epsilon = float(epsilon)
        if not (diveq_noise_std >= 0 and math.isfinite(diveq_noise_std)):
            raise ValueError(f"diveq_noise_std must be finite and >= 0, got {diveq_noise_std}")
        self.diveq_noise_std = float(diveq_noise_std)
        self.ibq_logits = _choice("ibq_logits", ibq_logits, IBQ_LOGITS)
        if not (ibq_entropy_weight >= 0 and ibq_entropy_temperature > 0):
            raise ValueError(f"need ibq_entropy_weight >= 0 and ibq_entropy_temperature > 0, got "
                             f"{ibq_entropy_weight} and {ibq_entropy_temperature}")
        self.ibq_entropy_weight = float(ibq_entropy_weight)
        self.ibq_entropy_temperature = float(ibq_entropy_temperature)
        self._init_gumbel(temperature, kl_weight, kl_warmup_steps, temperature_steps, gumbel_logits, gumbel_sample)
        factorised = self.codebook_dim != dim
        self.project_in = nn.Linear(dim, self.codebook_dim) if factorised else nn.Identity()
        self.project_out = nn.Linear(self.codebook_dim, dim) if factorised else nn.Identity()

        self._init_codes(codebook, cosine_init, affine_batch_decay, affine_codebook_decay, affine_sync)
        # EMA of per-code counts: drives the EMA update and dead-code detection in both modes.
        self.ema_counts = _choice("ema_counts", ema_counts, EMA_COUNTS)
        self.cosine_output = _choice("cosine_output", cosine_output, COSINE_OUTPUTS)
        self.vq_loss = _choice("vq_loss", vq_loss, VQ_LOSSES)
        counts = torch.ones(codebook_size) if ema_counts == "ones" else torch.zeros(codebook_size)
        self.register_buffer("cluster_size", counts)
        self.register_buffer("initialized", torch.tensor(init != "kmeans"))
        self._grad_cos: Tensor | None = None  # Σ over backward passes of mean cos(grad_e, g) (gradient_cosine)
        self._grad_cos_n = 0
        self._pending_q_hook = None

    def _init_codes(self, codebook, cosine_init, affine_batch_decay, affine_codebook_decay, affine_sync) -> None:
        """The parameterisation and the stored codebook: the codes (a buffer for EMA updates, a
        parameter when learned) or, for simvq, the frozen basis C (a buffer)."""
        codes = initial_codes(codebook, self.codebook_size, self.codebook_dim, self.init)  # simvq: the frozen basis C
        self.parameterisation = build_parameterisation(  # drawn after the codes (simvq: W after C, as upstream)
            codebook, self.codebook_dim, update=self.update, lookup=self.lookup, init=self.init,
            dead_code_threshold=self.dead_code_threshold, batch_decay=affine_batch_decay,
            codebook_decay=affine_codebook_decay, sync=affine_sync)
        self.cosine_init = _choice("cosine_init", cosine_init, COSINE_INITS)
        if self.lookup == "cosine" and cosine_init == "unit" and not self.parameterisation.frozen:
            codes = F.normalize(codes, dim=-1)
        if self.update == "ema":
            self.register_buffer("codebook", codes)
            self.register_buffer("embed_sum", codes.clone())
        elif self.parameterisation.frozen:  # simvq: the basis C is a buffer, W learns
            self.register_buffer("codebook", codes)
            self.embed_sum = None
        else:
            self.codebook = nn.Parameter(codes)
            self.embed_sum = None

    def _init_gumbel(self, temperature, kl_weight, kl_warmup_steps, temperature_steps, gumbel_logits,
                     gumbel_sample) -> None:
        """The gumbel estimator's options and schedule state (see :mod:`.estimators.gumbel`)."""
        if len(temperature) != 2 or not all(t > 0 for t in temperature):
            raise ValueError(f"temperature must be (start, end) with both > 0, got {temperature}")
        self.kl_weight = float(kl_weight)
        self.temperature_range = (float(temperature[0]), float(temperature[1]))
        self.temperature = self.temperature_range[0]  # the gumbel temperature now (see anneal)
        if kl_warmup_steps < 0 or temperature_steps is not None and temperature_steps < 1:
            raise ValueError(f"need kl_warmup_steps >= 0 and temperature_steps None or >= 1, got "
                             f"{kl_warmup_steps} and {temperature_steps}")
        self.kl_warmup_steps, self.temperature_steps = int(kl_warmup_steps), temperature_steps
        self.kl_scale = self.kl_weight_at(0)  # the gumbel KL weight now (see anneal)
        self.gumbel_logits = _choice("gumbel_logits", gumbel_logits, GUMBEL_LOGITS)
        self.gumbel_sample = _choice("gumbel_sample", gumbel_sample, GUMBEL_SAMPLES)
        linear = gumbel_logits == "linear"
        if linear and "gumbel_logits" not in self.estimator.own_options:
            raise ValueError("gumbel_logits 'linear' is an option of the gumbel estimator, not of "
                             f"{self.estimator.name!r}")
        if linear and self.update != "learned":
            raise ValueError("gumbel_logits 'linear' learns the codebook through the soft mixture of codes "
                             "(karpathy/deep-vector-quantization), so it needs update='learned', not 'ema'")
        if linear and self.codebook_dim != self.dim:
            raise ValueError(f"gumbel_logits 'linear' reads the layer's input directly, so a factorising "
                             f"projection to codebook_dim={self.codebook_dim} would be unused; leave codebook_dim "
                             "unset")
        # gumbel_logits "linear": logits = W x + b on the input (N, D) -> (N, K), karpathy's 1×1 conv
        self.logit_proj = logit_projection(self.dim, self.codebook_size) if linear else None

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, codebook_size={self.codebook_size}, codebook_dim={self.codebook_dim}, "
                f"estimator={self.estimator.name}, lookup={self.lookup}, update={self.update}, "
                f"decay={self.decay}, beta={self.beta}")

    def _apply(self, fn, recurse=True):
        """``.to(dtype)`` / ``.half()`` move the layer but keep its codebook statistics in fp32:
        EMA counts and sums lose too much in 16-bit formats (DESIGN: quantizer math in fp32)."""
        super()._apply(fn, recurse)
        for name in ("codebook", "embed_sum", "cluster_size"):
            buf = self._buffers.get(name)
            if buf is not None and buf.is_floating_point() and buf.dtype != torch.float32:
                self._buffers[name] = buf.float()
        return self

    def project(self, layer: nn.Module, x: Tensor) -> Tensor:
        """A factorising projection applied in fp32, whatever dtype the module was cast to."""
        return project_fp32(layer, x)

    def codes(self) -> Tensor:
        """The (K, d) code vectors as used for lookup (l2-normalised for cosine lookup)."""
        c = self.parameterisation.codes(self.codebook.float())  # simvq: C Wᵀ; affine: shifted and scaled
        return F.normalize(c, dim=-1) if self.lookup == "cosine" else c

    def _flatten(self, z: Tensor) -> tuple[Tensor, tuple[int, ...]]:
        return to_rows(z, self.dim)

    def _unflatten(self, x: Tensor, grid: tuple[int, ...]) -> Tensor:
        return from_rows(x, grid, self.dim)

    def to_output(self, v: Tensor, grid: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        """Rows ``v`` (N, d) in code space -> the layer's output layout (B, D, *spatial) in ``dtype``."""
        return self._unflatten(self.project(self.project_out, v), grid).to(dtype)

    def forward(self, z: Tensor) -> QuantizeOutput:
        """Quantize channel-first features ``z`` (B, D, *spatial)."""
        with torch.autocast(device_type=z.device.type, enabled=False):  # quantizer math in fp32
            x, grid = self._flatten(z)
            e = e_raw = self.project(self.project_in, x)  # (N, d)
            if self.lookup == "cosine":
                e = F.normalize(e, dim=-1)
            if self.init == "kmeans" and self.training and not bool(self.initialized):
                self._kmeans_init(e.detach())
            if self.training:
                self.parameterisation.observe(e.detach(), self.codebook.detach())  # affine: running statistics
            codes = self.codes()  # (K, d)
            logits = None if self.logit_proj is None else self.project(self.logit_proj, x)  # (N, K)
            if logits is None:
                indices = self.estimator.indices(self, e.detach(), codes.detach())  # ibq: its own argmax
                if indices is None:
                    indices = cb.nearest_codes(e.detach(), codes.detach(), self.lookup, self.chunk)  # (N,)
            else:  # gumbel_logits "linear": the code the logits choose (hard one-hot of the argmax at eval)
                indices = logits.detach().argmax(-1)  # (N,)
            q = F.embedding(indices, codes)  # (N, d); carries gradient to a learned codebook

            sq_err = F.mse_loss(e, q.detach())
            commit_w, codebook_w = (self.beta, 1.0) if self.vq_loss == "vqvae" else (1.0, self.beta)
            zero = sq_err.new_zeros(())
            vq_terms = logits is None  # linear logits (karpathy): no commitment, no codebook term
            losses = QuantizeLosses(
                commitment=commit_w * sq_err if vq_terms else zero,
                codebook=codebook_w * F.mse_loss(q, e.detach()) if vq_terms and self.update == "learned" else zero,
                prior=zero,
            )
            found = Found(x, e, e_raw, q, codes, logits, grid, z.dtype, indices)
            if self.estimator.pointwise or (self.training and torch.is_grad_enabled() and e.requires_grad):
                res = self.estimator.quantize(self, found)  # pointwise: forward value q, bit for bit
            else:
                res = Quantized(q.detach())  # eval (or no gradient wanted): the code of the index, hard
            q_tilde = res.q_tilde
            if self.estimator.pointwise and self.lookup == "cosine" and self.cosine_output == "renormalize":
                q_tilde = _Renormalize.apply(q_tilde)
            if res.prior is not None:
                losses.prior = res.prior
            hook, self._pending_q_hook = self._pending_q_hook, None
            if hook is not None and q_tilde.requires_grad:
                q_tilde.register_hook(hook)
            out = self._unflatten(self.project(self.project_out, q_tilde), grid)
            metrics = self._statistics(e.detach(), q.detach(), indices, sq_err.detach())
        return QuantizeOutput(out.to(z.dtype), indices.reshape(grid), losses, metrics, **res.extra)

    def anneal(self, step: int, total_steps: int) -> None:
        """Before optimizer step ``step`` (0-based) of a ``total_steps`` run: the estimator's
        schedules (gumbel: the temperature and the KL weight), functions of the step alone."""
        self.estimator.start_step(self, step, total_steps)

    def kl_weight_at(self, step: int) -> float:
        """The gumbel KL weight at optimizer step ``step``: ``kl_weight`` throughout, or with
        ``kl_warmup_steps`` N > 0 cosine_anneal from 0 to ``kl_weight`` over steps 0..N, then
        ``kl_weight`` (karpathy/deep-vector-quantization's RampBeta: cos_anneal(0, N, 0, w, step))."""
        if self.kl_warmup_steps == 0:
            return self.kl_weight
        return cosine_anneal(0.0, self.kl_weight, step / self.kl_warmup_steps)

    def watch_gradients(self, e: Tensor) -> Tensor:
        """``e`` itself, through an alias whose gradient is the estimator's alone (the commitment
        loss reaches ``e`` by another path): the backward pass records the mean cosine between
        grad_e and g = dL/dq̃ over the rows, read with :meth:`gradient_cosine`. The hook on q̃ is
        registered by ``forward`` once q̃ exists; the two hooks may fire in either order."""
        if not (torch.is_grad_enabled() and e.requires_grad):
            return e
        alias = e.view_as(e)
        seen: dict[str, Tensor] = {}

        def on(side: str, grad: Tensor) -> None:
            seen[side] = grad.detach()
            if len(seen) == 2:
                self.record_gradient_cosine(seen.pop("e"), seen.pop("q"))

        alias.register_hook(lambda grad: on("e", grad))
        self._pending_q_hook = lambda grad: on("q", grad)
        return alias

    @torch.no_grad()
    def record_gradient_cosine(self, grad_e: Tensor, g: Tensor) -> None:
        """Add one backward pass's mean over rows of cos(grad_e, g) to :meth:`gradient_cosine`."""
        cos = F.cosine_similarity(grad_e.float(), g.float(), dim=-1, eps=1e-12).mean()
        self._grad_cos = cos if self._grad_cos is None else self._grad_cos + cos  # a running sum
        self._grad_cos_n += 1

    def gradient_cosine(self) -> float | None:
        """Mean over rows of cos(grad_e, g) from the backward passes since the last call (None:
        none happened): 1 for STE; how far the estimator turns the decoder's gradient."""
        total, n = self._grad_cos, self._grad_cos_n
        self._grad_cos, self._grad_cos_n = None, 0
        return float(total) / n if n else None

    @torch.no_grad()
    def _statistics(self, e: Tensor, q: Tensor, indices: Tensor, sq_err: Tensor) -> QuantizeMetrics:
        """Count assignments (over all ranks in training), update the codebook, measure."""
        k, d = self.codebook_size, self.codebook_dim
        fallbacks = self.estimator.count_fallbacks(e, q).float()
        # One buffer, one collective: [counts (K) | fallbacks | Σ(e − q)² | obtuse rows | Σe² | sums (K·d) for EMA].
        ema = self.training and self.update == "ema"
        stats = torch.zeros(k + 4 + (k * d if ema else 0), device=e.device)
        stats[:k] = torch.bincount(indices, minlength=k).float()
        stats[k] = fallbacks
        stats[k + 1] = sq_err * e.numel()
        stats[k + 2] = ((e * q).sum(-1) < 0).sum()
        stats[k + 3] = (e * e).sum()
        if ema:
            stats[k + 4 :].view(k, d).index_add_(0, indices, self.parameterisation.to_stored(e))
        if self.training:
            cb.all_reduce_sum(stats)
        counts = stats[:k]
        restarted = 0
        if self.training:
            if ema:
                cb.ema_update(self.codebook, self.cluster_size, self.embed_sum, counts,
                              stats[k + 4 :].view(k, d), self.decay, self.eps)
            else:
                self.cluster_size.mul_(self.decay).add_(counts, alpha=1.0 - self.decay)
            if self.dead_code_threshold > 0:
                restarted = cb.restart_dead_codes(self.codebook.data, self.cluster_size, self.embed_sum,
                                                  self.parameterisation.to_stored(e),
                                                  self.dead_code_threshold)
        total = counts.sum()
        p = counts / total
        entropy = -(p * torch.log(p.clamp_min(1e-30))).sum()
        return QuantizeMetrics(
            usage=(counts > 0).float().mean(),
            perplexity=entropy.exp(),
            quant_error=stats[k + 1] / (total * d),
            fallbacks=stats[k],
            restarted=torch.tensor(float(restarted)),
            obtuse=stats[k + 2] / total,
            latent_power=stats[k + 3] / (total * d),
        )

    @torch.no_grad()
    def _kmeans_init(self, e: Tensor) -> None:
        centroids = cb.kmeans(e, self.codebook_size, self.kmeans_iters, self.lookup)
        self.codebook.data.copy_(centroids)
        if self.embed_sum is not None:
            self.embed_sum.copy_(centroids)
        self.initialized.fill_(True)

    def indices_to_codes(self, indices: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """Codes for ``indices`` (B, *spatial) in the layer's output layout (B, D, *spatial):
        exactly what ``forward`` returned as ``quantized`` for inputs of ``dtype`` (default fp32)
        that chose these indices."""
        check_indices(indices, self.codebook_size)
        grid = tuple(indices.shape)
        with torch.autocast(device_type=indices.device.type, enabled=False):
            q = F.embedding(indices.reshape(-1).long(), self.codes())  # (N, d)
            out = self._unflatten(self.project(self.project_out, q), grid)
        return out if dtype is None else out.to(dtype)


__all__ = ["VectorQuantizer", "QuantizeOutput", "QuantizeLosses", "QuantizeMetrics", "ESTIMATORS", "UPDATES"]
