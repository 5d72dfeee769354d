"""rvq against an upstream VQ model assembled from peer code nobody here wrote, trained side by side.

The peer model is taming-transformers' ``Encoder`` → projection → vector-quantize-pytorch's
``VectorQuantize`` → projection → taming's ``Decoder``. The projection is either nothing (the
encoder's z_channels is the code dimension, as in the official rotation-trick Table 1 VQ-VAE) or
taming ``VQModel``'s 1×1 ``quant_conv``/``post_quant_conv``. ``VectorQuantize`` runs the paper's
Euclidean setting: decay 0.8, commitment weight 1, Laplace smoothing eps 1e-5, kaiming-uniform
codebook, no k-means, no dead-code restarts, no stochastic sampling, no codebook sync, no extra
losses (orthogonal, diversity) and no input/output projections inside the quantizer.

rvq's ``build_conv_tokenizer`` is configured the same way ("upstream"), the peer's encoder,
decoder, projection and codebook state is copied into it (taming's key names load as they are),
and both are trained side by side, each on its own gradients, for 1 + 20 steps in fp32 on the CPU
on the same fixed batches with the same AdamW (lr 1e-3, betas (0.9, 0.99)) over all parameters,
on mse(reconstruction, x) + the quantizer's loss. At every step the test asserts: the same code
indices; the same reconstructions and losses; the same codebook statistics after the EMA update
(codes, counts, sums); the same gradient for every parameter; the same weights after the
optimizer step. Tolerances are ~1e-5 (see the constants, with what was measured).

What two correct fp32 implementations can and cannot agree on, and how the test deals with it:

- Rounding: the two models compute the same functions in different orders (SiLU, attention,
  the estimator's forward value, the EMA's lerp), so their fp32 results differ by ~1e-6, as the
  peer's own fp32 results differ from its float64 evaluation. Over 20 free-running steps this
  drifts: the weights end ~1e-6 apart, reconstructions ~1e-5. Gradients that are sums with much
  cancellation (mid-block and conv_in biases, attention q.bias) amplify that to ~1e-4 relative
  on a few parameters, so gradients are compared both per parameter and over the whole encoder.
- AdamW's first update is lr·g/(|g| + ε), lr·sign(g): a gradient entry within rounding of zero
  (|g| ~ 1e-8 next to 1e-2 in the same tensor) moves by ±lr in a direction rounding picks. So the
  first update is shared: both optimizers step on the peer's gradient (after it was compared), and
  the weights after it are equal bit for bit. From the second update on v holds that history.
- Some parameters have no gradient at all in exact arithmetic (:data:`NULL_GRADIENT`); both models
  compute rounding noise for them, which Adam turns into ±lr steps of its own. They are checked to
  be rounding noise in both models, and their weights are not compared.
- Code indices must be equal, except on a near tie: a row whose two candidate codes score within
  :data:`NEAR_TIE` of each other (float64) at both models' latents can go either way once the
  latents are ~1e-6 apart. Such a flip is reported, each model's choice is checked to be that
  near tie, and rvq restarts from the peer's state (the step cannot agree after it). None occurs
  with the seeds here; a sweep of 9 seeds × 7 cases met two, one row each, where each model had
  picked the nearest code for its own latent (float64 gaps 2.6e-7 and 1.3e-8 one way at rvq's
  latent, 8.9e-7 and 2.3e-7 the other way at the peer's).

Where peer code and the paper differ, and which one rvq follows:

- Rotation trick: vector-quantize-pytorch's ``rotate_to`` computes
  sg(λ)·(e − 2(e·sg w)sg w + 2(e·sg ê)sg q̂), so its gradient to e is the paper's λRᵀg
  (§4.2, ê and λ detached): rvq's ``estimator="rotation"``. The authors' released VQGAN code
  (cfifty/rotation_trick, Tables 3-4) does not detach ê and is rvq's ``rotation_released``; it is
  not compared here (tests/quantize/test_upstream_variants.py checks it against its own form).
- STE: the peer's forward value is e + sg(q − e), equal to q up to one rounding; rvq returns q bit
  for bit. The gradients are the same (g to e).
- EMA counts: vector-quantize-pytorch 1.32 starts ``cluster_size`` at ones (rvq's
  ``ema_counts="ones"``, the default); the rotation-trick repository vendors 1.14.8, whose counts
  start at zero (``ema_counts="zeros"``), compared here by zeroing the peer's buffer.
- Cosine lookup (``use_cosine_sim=True`` / ``lookup="cosine"``): the peer stores l2-normalised
  codes, rvq stores the unnormalised EMA ratio and normalises it at lookup; the codes used are
  the same, so the test compares rvq's ``codes()`` with the peer's stored codebook.
- Nearest-code search: the peer takes the argmax of −sqrt(clamp(‖x‖² + ‖c‖² − 2x·c, 1e-8)) (or
  of x·c) in fp32; rvq decides rows within fp32 rounding of a tie again in float64. On the same
  latent they can differ only within that rounding, far inside :data:`NEAR_TIE`.
"""

from __future__ import annotations

import contextlib
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

taming_model = pytest.importorskip("taming.modules.diffusionmodules.model")
vqp = pytest.importorskip("vector_quantize_pytorch")

from rvq_cli.models import build_conv_tokenizer  # noqa: E402

# Tiny taming VQGAN: 32×32 RGB -> 16×16 latents, attention at 16 (down.1, up.1, mid). GroupNorm in
# taming is hard-coded to 32 groups, so every normalised channel count is a multiple of 32.
ARCH = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,), resolution=32)
CODE_DIM = 8  # D
CODEBOOK_SIZE = 32  # K
Z_CONV = 16  # the encoder's z_channels when 1×1 convs project to and from D
STEPS, BATCH = 20, 4
LR, BETAS = 1e-3, (0.9, 0.99)

# Tolerances. In brackets the worst value measured with the seeds here (7 cases, one thread, x86
# CPU), then the worst over 9 seeds × 7 cases; each tolerance is at least twice the latter.
TOL = 1e-5  # abs: losses (8.9e-8; 1.2e-7) and weights (1.5e-6; 4.3e-6); relative to the largest:
#             the EMA counts (2.7e-7; 2.9e-7)
DRIFT_TOL = 3e-5  # abs: reconstructions (7.2e-6; 1.3e-5); relative, code by code: the codes (5.6e-6;
#                   9.4e-6) and the EMA sums (5.6e-6; 9.5e-6)
GRAD_RTOL_TOTAL = 5e-5  # the whole encoder gradient, ‖Δg‖ / ‖g‖ (1.0e-5; 1.7e-5)
GRAD_RTOL_PARAM = 5e-4  # each parameter, max |Δg| / max |g| (encoder 1.1e-4, decoder 4.6e-5; 2.3e-4, 7.1e-5)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread while the models train: the runs' rounding is then the same on every
    machine with the same CPU kernels, and a busy CPU does not stall the threads' hand-offs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def smooth_batches(steps: int = STEPS, n: int = BATCH, size: int = 32, seed: int = 0) -> list[torch.Tensor]:
    """Fixed low-frequency images in [-1, 1], a different batch every step."""
    gen = torch.Generator().manual_seed(seed)
    low = torch.randn(steps, n, 3, size // 4, size // 4, generator=gen)
    up = F.interpolate(low.flatten(0, 1), size=(size, size), mode="bicubic", align_corners=False)
    return list(torch.tanh(up).reshape(steps, n, 3, size, size).unbind(0))


class PeerVQModel(nn.Module):
    """taming Encoder → (1×1 conv) → VectorQuantize → (1×1 conv) → taming Decoder, with rvq's
    submodule names so the two models' parameters pair up by name."""

    def __init__(self, *, z_channels: int, projection: str, rotation_trick: bool, cosine: bool = False) -> None:
        super().__init__()
        arch = dict(ARCH, out_ch=3, in_channels=3, z_channels=z_channels, dropout=0.0, resamp_with_conv=True)
        with contextlib.redirect_stdout(io.StringIO()):  # taming's Decoder prints the z shape
            self.encoder = taming_model.Encoder(double_z=False, **arch)
            self.decoder = taming_model.Decoder(**arch)
        if projection == "conv":
            self.quant_conv = nn.Conv2d(z_channels, CODE_DIM, 1)
            self.post_quant_conv = nn.Conv2d(CODE_DIM, z_channels, 1)
        else:
            assert z_channels == CODE_DIM
            self.quant_conv, self.post_quant_conv = nn.Identity(), nn.Identity()
        self.quantize = vqp.VectorQuantize(
            dim=CODE_DIM, codebook_size=CODEBOOK_SIZE, decay=0.8, commitment_weight=1.0, kmeans_init=False,
            threshold_ema_dead_code=0, accept_image_fmap=True, rotation_trick=rotation_trick,
            use_cosine_sim=cosine,
            # the defaults of 1.32, spelled out: nothing stochastic, synchronised or extra
            eps=1e-5, straight_through=False, stochastic_sample_codes=False, sync_codebook=False,
            orthogonal_reg_weight=0.0, codebook_diversity_loss_weight=0.0, directional_reparam=False,
            learnable_codebook=False, ema_update=True, sync_update_v=0.0, affine_param=False,
        )

    def forward(self, x: torch.Tensor):
        quantized, indices, loss = self.quantize(self.quant_conv(self.encoder(x)))
        return self.decoder(self.post_quant_conv(quantized)), indices, loss


def check_peer_config(vq, rotation_trick: bool, cosine: bool) -> None:
    """What VectorQuantize actually runs: the options the comparison relies on."""
    cb = vq._codebook
    assert not vq.has_projections and isinstance(vq.project_in, nn.Identity)
    assert vq.rotation_trick is rotation_trick and not vq.directional_reparam
    assert vq.commitment_weight == 1.0 and vq.has_commitment_loss and not vq.commitment_use_cross_entropy_loss
    assert not vq.has_codebook_orthogonal_loss and not vq.has_codebook_diversity_loss
    assert not vq.learnable_codebook and vq.in_place_codebook_optimizer is None and vq.sync_update_v == 0.0
    assert vq.heads == 1 and not vq.freeze_codebook and vq.route_gradients_to_input
    assert cb.ema_update and not cb.manual_ema_update and not cb.affine_param and cb.vq_bridge is None
    assert cb.decay == 0.8 and cb.eps == 1e-5 and not cb.has_dead_code_replacement and not cb.use_ddp
    assert cb.gumbel_sample.keywords == {"stochastic": False, "straight_through": False}
    assert bool(cb.initted) and cb.use_cosine_sim is cosine
    assert cb.embed.shape == (1, CODEBOOK_SIZE, CODE_DIM) and isinstance(cb.embed, torch.Tensor)
    assert "embed" in dict(cb.named_buffers())  # a buffer, not a parameter: no gradient, no optimizer
    if not cosine:  # kaiming_uniform_ on (1, K, D): fan_in = K·D, bound √(6 / (K·D)), as rvq's init
        assert cb.embed.abs().max() <= math.sqrt(6.0 / (CODEBOOK_SIZE * CODE_DIM))


def build_pair(*, estimator: str, projection: str, ema_counts: str = "ones", lookup: str = "euclidean",
               seed: int = 0):
    """The peer model (seeded) and rvq's, with the peer's weights and codebook copied into rvq."""
    cosine = lookup == "cosine"
    rotation_trick = {"rotation": True, "ste": False}[estimator]
    z = CODE_DIM if projection == "none" else Z_CONV
    torch.manual_seed(seed)
    peer = PeerVQModel(z_channels=z, projection=projection, rotation_trick=rotation_trick, cosine=cosine)
    check_peer_config(peer.quantize, rotation_trick, cosine)
    cb = peer.quantize._codebook
    assert torch.equal(cb.cluster_size, torch.ones(1, CODEBOOK_SIZE))  # 1.32 starts counts at one
    if ema_counts == "zeros":  # vector-quantize-pytorch 1.14.8 (vendored by cfifty/rotation_trick)
        cb.cluster_size.zero_()

    torch.manual_seed(seed + 1)
    rvq = build_conv_tokenizer(
        **ARCH, z_channels=z, embed_dim=CODE_DIM, norm_groups=32, projection=projection,
        quantizer=dict(codebook_size=CODEBOOK_SIZE, estimator=estimator, lookup=lookup, update="ema", decay=0.8,
                       beta=1.0, ema_counts=ema_counts),
    )
    q = rvq.quantize
    assert q.estimator.name == estimator and q.lookup == lookup and q.update == "ema" and q.init == "kaiming_uniform"
    assert (q.decay, q.eps, q.beta, q.dead_code_threshold) == (0.8, 1e-5, 1.0, 0.0)
    assert q.codebook_dim == CODE_DIM and isinstance(q.project_in, nn.Identity) and q.cosine_output == "as_is"
    assert q.vq_loss == "vqvae"  # β on the commitment term, as the peer's commitment_weight
    assert q.cluster_size.eq(1.0 if ema_counts == "ones" else 0.0).all()
    if not cosine:
        assert q.codebook.abs().max() <= math.sqrt(6.0 / (CODEBOOK_SIZE * CODE_DIM))  # the same init as the peer's
    # taming's submodule names: the same keys and shapes, loaded strictly
    for name in ("encoder", "decoder", "quant_conv", "post_quant_conv"):
        theirs, ours = getattr(peer, name).state_dict(), getattr(rvq, name).state_dict()
        assert theirs.keys() == ours.keys(), name
        assert all(theirs[k].shape == ours[k].shape for k in theirs), name
        getattr(rvq, name).load_state_dict(theirs)
    with torch.no_grad():
        q.codebook.copy_(cb.embed[0])
        q.embed_sum.copy_(cb.embed_avg[0])
        q.cluster_size.copy_(cb.cluster_size[0])
    assert dict(rvq.named_parameters()).keys() == dict(peer.named_parameters()).keys()
    for name, p in peer.named_parameters():
        assert torch.equal(p, rvq.get_parameter(name)), name
    return peer, rvq


# Parameters whose gradient is zero in exact arithmetic, in both models: what each computes for
# them is rounding noise (1e-11 to 1e-8 here, against gradients of 1e-4 to 1e-1 elsewhere), and
# AdamW, which divides by √v, turns that noise into steps of ±lr in directions of its own. They
# cannot change any output (again in exact arithmetic), so their weights are not compared; their
# gradients are checked to be rounding noise in both models instead.
# - every attention block's k.bias: it adds q·b_k to all the logits of a query, which softmax ignores;
# - the biases of convs whose output reaches the rest of the network only through GroupNorms with
#   one channel per group (32 channels, 32 groups at level 0), which subtract them again.
NULL_GRADIENT = frozenset({
    "encoder.down.1.attn.0.k.bias", "encoder.mid.attn_1.k.bias", "decoder.mid.attn_1.k.bias",
    "decoder.up.1.attn.0.k.bias", "decoder.up.1.attn.1.k.bias",
    "encoder.down.0.block.0.conv1.bias",
    "decoder.up.0.block.0.conv1.bias", "decoder.up.0.block.0.conv2.bias", "decoder.up.0.block.0.nin_shortcut.bias",
    "decoder.up.0.block.1.conv1.bias", "decoder.up.0.block.1.conv2.bias",
})
NULL_LEVEL = 1e-6  # "rounding noise": at most this times the model's largest gradient entry

# A code index may differ only where the two chosen codes score within NEAR_TIE of each other
# (float64, squared distance or cosine) at both models' latents, on at most MAX_FLIP_ROWS rows of a
# run; rvq then restarts from the peer's state. The runs' latents differ by ~1e-6 (2.6e-6 at the
# flip seen), which moves such a score difference by ~1e-6 (9e-7 there, 4e-8 in another).
NEAR_TIE = 1e-5
MAX_FLIP_ROWS = 2


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| relative to max |b|."""
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def row_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max over rows k of ‖a_k − b_k‖ / ‖b_k‖: every code on its own scale (with counts starting at
    zero, unused codes grow ~1e4-fold and would set the scale of a whole-matrix comparison)."""
    a, b = a.detach(), b.detach()
    return float(((a - b).norm(dim=-1) / b.norm(dim=-1).clamp_min(1e-30)).max())


def absdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach() - b.detach()).abs().max())


def scores(z: torch.Tensor, codes: torch.Tensor, lookup: str) -> torch.Tensor:
    """float64 scores (N, K), larger is nearer, of the quantizer input z (B, D, h, w) against the
    codes (K, D) the lookup used: minus the squared distance, or the cosine (z l2-normalised in
    fp32 first, as both models do; the codes already are)."""
    e = z.detach().float().movedim(1, -1).reshape(-1, z.shape[1])
    if lookup == "cosine":
        e = F.normalize(e, dim=-1)
    e, codes = e.double(), codes.detach().double()
    return e @ codes.t() if lookup == "cosine" else -torch.cdist(e, codes) ** 2


def nearest_gap(score: torch.Tensor) -> torch.Tensor:
    """Per row: how far the runner-up code's score is behind the best one."""
    two = score.topk(2, dim=-1).values
    return two[:, 0] - two[:, 1]


def explain_flip(step: int, idx_r: torch.Tensor, idx_p: torch.Tensor, score_r: torch.Tensor,
                 score_p: torch.Tensor) -> int:
    """Fail unless every row whose index differs is a near tie between the two chosen codes, at
    both models' latents (float64): the two runs' latents differ by ~1e-6 after a few steps, so
    such a row can legitimately go either way. Returns how many rows differ."""
    bad = (idx_r != idx_p).reshape(-1).nonzero().squeeze(1)
    a, b = idx_r.reshape(-1)[bad], idx_p.reshape(-1)[bad]
    rows = torch.arange(len(bad))
    gap_r = score_r[bad][rows, a] - score_r[bad][rows, b]  # rvq's pick minus the peer's, at rvq's latent
    gap_p = score_p[bad][rows, a] - score_p[bad][rows, b]  # the same at the peer's latent
    detail = (f"step {step}: {len(bad)} of {idx_r.numel()} indices differ (rvq {a.tolist()}, peer {b.tolist()}); "
              f"float64 score of rvq's code minus the peer's at rvq's latent {gap_r.tolist()}, at the peer's "
              f"{gap_p.tolist()}")
    if len(bad) > MAX_FLIP_ROWS or bool((gap_r.abs() > NEAR_TIE).any() | (gap_p.abs() > NEAR_TIE).any()):
        pytest.fail(detail + f": not near ties (|gap| <= {NEAR_TIE:g}, at most {MAX_FLIP_ROWS} rows)")
    print("\nnear tie, resynchronised: " + detail)
    return len(bad)


@torch.no_grad()
def resynchronise(peer, rvq, opt_peer, opt_rvq) -> None:
    """Copy the peer's weights, AdamW state and codebook statistics into rvq."""
    cb, q = peer.quantize._codebook, rvq.quantize
    for name, p in peer.named_parameters():
        mine = rvq.get_parameter(name)
        mine.copy_(p)
        opt_rvq.state[mine] = {k: v.clone() for k, v in opt_peer.state.get(p, {}).items()}
    q.codebook.copy_(cb.embed[0])
    q.embed_sum.copy_(cb.embed_avg[0])
    q.cluster_size.copy_(cb.cluster_size[0])


def train_side_by_side(peer, rvq, *, lookup: str = "euclidean", steps: int = STEPS) -> dict[str, float]:
    """Train both models on the same batches, each on its own gradients; assert agreement at
    every step. Step 0 is compared like the others, but both optimizers then take the peer's
    gradient: AdamW's first update is lr·g/(|g| + ε), lr·sign(g), so a gradient entry within
    rounding of zero (|g| ~ 1e-8) would differ by up to 2·lr between two fp32 implementations.
    From the second update on, v holds that history and rounding stays rounding. Returns the
    worst difference of every compared quantity over the run."""
    opt_peer = torch.optim.AdamW(peer.parameters(), lr=LR, betas=BETAS)
    opt_rvq = torch.optim.AdamW(rvq.parameters(), lr=LR, betas=BETAS)
    peer.train(), rvq.train()
    cb, q = peer.quantize._codebook, rvq.quantize
    names = [n for n, _ in peer.named_parameters()]
    assert NULL_GRADIENT <= set(names)
    encoder = [n for n in names if n.startswith(("encoder.", "quant_conv.")) and n not in NULL_GRADIENT]
    worst: dict[str, float] = {"min_nearest_gap": math.inf, "flipped_rows": 0}
    seen: dict[str, torch.Tensor] = {}  # both quantizers' inputs and codes, to explain an index mismatch
    q.register_forward_pre_hook(lambda _, args: seen.update(z_r=args[0].detach(), c_r=q.codes().detach().clone()))
    peer.quantize.register_forward_pre_hook(
        lambda _, args: seen.update(z_p=args[0].detach(), c_p=cb.embed[0].detach().clone()))

    def record(key: str, value: float, tol: float, step: int) -> None:
        worst[key] = max(worst.get(key, 0.0), value)
        assert value <= tol, f"step {step}: {key} differs by {value:.3g} (tolerance {tol:g}); worst so far {worst}"

    updated = False
    for step, x in enumerate(smooth_batches(steps + 1)):
        rec_p, idx_p, commit_p = peer(x)
        loss_p = F.mse_loss(rec_p, x) + commit_p
        out = rvq(x)
        loss_r = F.mse_loss(out.reconstruction, x) + out.quantize.losses.total

        score_r = scores(seen["z_r"], seen["c_r"], lookup)  # this step's lookup, before its EMA update
        worst["min_nearest_gap"] = min(worst["min_nearest_gap"], float(nearest_gap(score_r).min()))
        if not torch.equal(out.indices, idx_p):
            worst["flipped_rows"] += explain_flip(step, out.indices, idx_p, score_r,
                                                  scores(seen["z_p"], seen["c_p"], lookup))
            assert worst["flipped_rows"] <= MAX_FLIP_ROWS, f"step {step}: too many near ties flipped: {worst}"
            # The rest of this step cannot agree (one decoder input differs by a whole code), so
            # neither model takes it: rvq restarts from the peer's state, EMA update included.
            resynchronise(peer, rvq, opt_peer, opt_rvq)
            continue
        record("reconstruction_abs", absdiff(out.reconstruction, rec_p), DRIFT_TOL, step)
        record("commitment_abs", absdiff(out.quantize.losses.total, commit_p), TOL, step)
        record("loss_abs", absdiff(loss_r, loss_p), TOL, step)
        # the codebook after this step's EMA update, which both forward passes made
        record("codebook_rel", row_rel(q.codes(), cb.embed[0]), DRIFT_TOL, step)
        record("embed_sum_rel", row_rel(q.embed_sum, cb.embed_avg[0]), DRIFT_TOL, step)
        record("cluster_size_rel", rel(q.cluster_size, cb.cluster_size[0]), TOL, step)

        opt_peer.zero_grad(set_to_none=True), opt_rvq.zero_grad(set_to_none=True)
        loss_p.backward()
        loss_r.backward()
        grads_p = {n: p.grad for n, p in peer.named_parameters()}
        grads_r = {n: rvq.get_parameter(n).grad for n in names}
        assert all(g is not None for g in [*grads_p.values(), *grads_r.values()])
        for grads, who in ((grads_p, "peer"), (grads_r, "rvq")):
            top = max(float(g.abs().max()) for g in grads.values())
            noise = {n for n, g in grads.items() if float(g.abs().max()) <= NULL_LEVEL * top}
            assert noise == NULL_GRADIENT, f"step {step}: {who}'s rounding-noise gradients are {sorted(noise)}"
        for n in names:
            if n not in NULL_GRADIENT:
                kind = "encoder" if n in encoder else "decoder"
                record(f"{kind}_grad_rel_per_param", rel(grads_r[n], grads_p[n]), GRAD_RTOL_PARAM, step)
        diff = torch.cat([(grads_r[n] - grads_p[n]).flatten() for n in encoder])
        ref = torch.cat([grads_p[n].flatten() for n in encoder])
        record("encoder_grad_rel_total", float(diff.norm() / ref.norm()), GRAD_RTOL_TOTAL, step)

        first = not updated  # the first update is shared (see the docstring)
        updated = True
        if first:
            for n in names:
                grads_r[n].copy_(grads_p[n])
        opt_peer.step(), opt_rvq.step()
        for n, p in peer.named_parameters():
            if first:
                assert torch.equal(rvq.get_parameter(n), p), n
            elif n not in NULL_GRADIENT:
                record("weight_abs", absdiff(rvq.get_parameter(n), p), TOL, step)
    return worst


CASES = [
    pytest.param("rotation", "none", id="rotation-none"),
    pytest.param("rotation", "conv", id="rotation-conv", marks=pytest.mark.slow),
    pytest.param("ste", "none", id="ste-none", marks=pytest.mark.slow),
    pytest.param("ste", "conv", id="ste-conv", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("estimator, projection", CASES)
def test_parity_euclidean(estimator, projection):
    """The paper's Euclidean setting, counts starting at one (vector-quantize-pytorch 1.32)."""
    peer, rvq = build_pair(estimator=estimator, projection=projection)
    worst = train_side_by_side(peer, rvq)
    print(f"\n{estimator}/{projection}: {worst}")


@pytest.mark.slow
def test_parity_zero_counts():
    """Counts starting at zero (vector-quantize-pytorch 1.14.8, vendored by the rotation-trick
    repository) against rvq's ema_counts="zeros": a code not chosen at the first update is divided
    by its smoothed count, ~eps, so it grows ~1e4-fold (to a norm of 1.8e4 here) and then decays by
    the decay factor every step, in both."""
    peer, rvq = build_pair(estimator="rotation", projection="none", ema_counts="zeros")
    worst = train_side_by_side(peer, rvq)
    print(f"\nrotation/none/zeros: {worst}")


@pytest.mark.slow
@pytest.mark.parametrize("estimator", ["rotation", "ste"])
def test_parity_cosine(estimator):
    """l2-normalised lookup (use_cosine_sim / lookup="cosine"): the estimator acts on ê, the
    gradient goes on through the normalisation to the encoder in both."""
    peer, rvq = build_pair(estimator=estimator, projection="conv", lookup="cosine")
    worst = train_side_by_side(peer, rvq, lookup="cosine")
    print(f"\n{estimator}/conv/cosine: {worst}")
