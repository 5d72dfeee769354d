"""rvq against an upstream VQ model assembled from peer code nobody here wrote, trained side by side.

The peer model is taming-transformers' ``Encoder`` → projection → vector-quantize-pytorch's
``VectorQuantize`` → projection → taming's ``Decoder``. The projection is either nothing (the
encoder's z_channels is the code dimension, as in the official rotation-trick Table 1 VQ-VAE) or
taming ``VQModel``'s 1×1 ``quant_conv``/``post_quant_conv``. ``VectorQuantize`` runs the paper's
Euclidean setting: decay 0.8, commitment weight 1, Laplace smoothing eps 1e-5, kaiming-uniform
codebook, no k-means, no dead-code restarts, no stochastic sampling, no codebook sync, no extra
losses (orthogonal, diversity) and no input/output projections inside the quantizer.

rvq's ``build_conv_tokenizer`` is configured the same way ("upstream"), the peer's encoder,
decoder, projection and codebook state is copied into it, and both are trained for 20 steps in
fp32 on the CPU on the same fixed batches with the same AdamW (lr 1e-3, betas (0.9, 0.99)) on
mse(reconstruction, x) + the quantizer's loss. At every step the test asserts the same code
indices, reconstructions and losses to ~1e-5, every encoder parameter's gradient to ~1e-5
relative (the decoder's too), the codebook statistics after the EMA update, and the weights after
the optimizer step.

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
- Nearest-code search: the peer takes the argmax of −sqrt(clamp(‖x‖² + ‖c‖² − 2x·c, 1e-8)) in
  fp32; rvq decides near ties again in float64. They agree unless two codes are within fp32
  rounding of each other, which the test would report as an index mismatch.
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

TOL = 1e-5  # the tolerance: abs for images/losses/weights, relative for gradients and codes


def smooth_batches(steps: int = STEPS, n: int = BATCH, size: int = 32, seed: int = 0) -> list[torch.Tensor]:
    """Fixed low-frequency images in [-1, 1], a different batch every step."""
    gen = torch.Generator().manual_seed(seed)
    low = torch.randn(steps, n, 3, size // 8, size // 8, generator=gen)
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
    # taming's submodule names: the state dicts load key for key (strict), both ways round
    for name in ("encoder", "decoder", "quant_conv", "post_quant_conv"):
        theirs, ours = getattr(peer, name).state_dict(), getattr(rvq, name).state_dict()
        assert theirs.keys() == ours.keys(), name
        assert all(theirs[k].shape == ours[k].shape for k in theirs), name
        getattr(rvq, name).load_state_dict(theirs)
    q = rvq.quantize
    assert q.cluster_size.eq(1.0 if ema_counts == "ones" else 0.0).all()
    with torch.no_grad():
        q.codebook.copy_(cb.embed[0])
        q.embed_sum.copy_(cb.embed_avg[0])
        q.cluster_size.copy_(cb.cluster_size[0])
    assert dict(rvq.named_parameters()).keys() == dict(peer.named_parameters()).keys()
    for name, p in peer.named_parameters():
        assert torch.equal(p, rvq.get_parameter(name)), name
    return peer, rvq


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| relative to max |b|."""
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def absdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def nearest_gap(e: torch.Tensor, codes: torch.Tensor, lookup: str) -> torch.Tensor:
    """Per row of e (N, D): how far (float64) the runner-up code's score is behind the best one."""
    e, codes = e.double(), codes.double()
    if lookup == "cosine":
        score = -(F.normalize(e, dim=-1) @ F.normalize(codes, dim=-1).t())
    else:
        score = torch.cdist(e, codes) ** 2
    two = score.topk(2, dim=-1, largest=False).values
    return two[:, 1] - two[:, 0]


def train_side_by_side(peer, rvq, *, lookup: str = "euclidean", steps: int = STEPS) -> dict[str, float]:
    """Train both models on the same batches; assert agreement at every step. Returns the worst
    difference of every compared quantity over the run."""
    opt_peer = torch.optim.AdamW(peer.parameters(), lr=LR, betas=BETAS)
    opt_rvq = torch.optim.AdamW(rvq.parameters(), lr=LR, betas=BETAS)
    peer.train(), rvq.train()
    cb, q = peer.quantize._codebook, rvq.quantize
    enc_names = [n for n, _ in peer.named_parameters() if n.startswith(("encoder.", "quant_conv."))]
    worst: dict[str, float] = {}

    def record(key: str, value: float, tol: float, step: int) -> None:
        worst[key] = max(worst.get(key, 0.0), value)
        assert value <= tol, f"step {step}: {key} differs by {value:.3g} (tolerance {tol:g}); worst so far {worst}"

    seen: dict[str, torch.Tensor] = {}  # rvq's quantizer input, to explain any index mismatch
    q.register_forward_pre_hook(lambda _, args: seen.update(z=args[0].detach()))

    for step, x in enumerate(smooth_batches(steps)):
        codes_now = q.codes().detach().clone()  # the codes of this step's lookup (before its EMA update)
        rec_p, idx_p, commit_p = peer(x)
        loss_p = F.mse_loss(rec_p, x) + commit_p
        out = rvq(x)
        loss_r = F.mse_loss(out.reconstruction, x) + out.quantize.losses.total

        e_now = q._flatten(seen["z"])[0]
        if not torch.equal(out.indices, idx_p):
            bad = (out.indices != idx_p).reshape(-1)
            gap = nearest_gap(e_now, codes_now, lookup)
            pytest.fail(f"step {step}: {int(bad.sum())} of {bad.numel()} indices differ; float64 gap between the "
                        f"best two codes there: {gap[bad].tolist()} (smallest gap anywhere {float(gap.min()):.3g})")
        worst["min_nearest_gap"] = min(worst.get("min_nearest_gap", math.inf),
                                       float(nearest_gap(e_now, codes_now, lookup).min()))
        record("reconstruction_abs", absdiff(out.reconstruction, rec_p), TOL, step)
        record("commitment_abs", absdiff(out.quantize.losses.total, commit_p), TOL, step)
        record("loss_abs", absdiff(loss_r, loss_p), TOL, step)
        # the codebook after this step's EMA update (done inside both forward passes)
        peer_codes = cb.embed[0]
        record("codebook_rel", rel(q.codes(), peer_codes), TOL, step)
        record("cluster_size_rel", rel(q.cluster_size, cb.cluster_size[0]), TOL, step)
        record("embed_sum_rel", rel(q.embed_sum, cb.embed_avg[0]), TOL, step)

        opt_peer.zero_grad(set_to_none=True), opt_rvq.zero_grad(set_to_none=True)
        loss_p.backward()
        loss_r.backward()
        for name, p in peer.named_parameters():
            g_r = rvq.get_parameter(name).grad
            assert p.grad is not None and g_r is not None, name
            on_encoder = name in enc_names  # what the estimator decides: the gradient through the quantizer
            record("encoder_grad_rel" if on_encoder else "decoder_grad_rel", rel(g_r, p.grad), TOL, step)
        opt_peer.step(), opt_rvq.step()
        for name, p in peer.named_parameters():
            record("weight_abs", absdiff(rvq.get_parameter(name).detach(), p.detach()), TOL, step)
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
    repository) against rvq's ema_counts="zeros": unused codes are blown up by 1/eps at the first
    update and decay from there, in both."""
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
