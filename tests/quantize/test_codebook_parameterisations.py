"""Codebook parameterisations (``codebook: simvq | affine``) against vector-quantize-pytorch as the
independent implementation, and what they promise in rvq: any estimator at the mapped code, tokens
that decode to what the decoder saw, state in the state dict, plain unchanged, every tokenizer.

- SimVQ (arXiv 2411.02038) against VQP's ``SimVQ``: the same frozen basis and map W copied into
  rvq, rvq ``estimator: ste`` against ``rotation_trick=False`` and ``rotation`` against
  ``rotation_trick=True``, VQP's loss ‖sg(e) − q‖² + 0.25‖e − sg(q)‖² (its defaults, the paper's
  VQ-VAE loss with β = 0.25) against rvq's ``vq_loss: vqvae, beta: 0.25``.
- Affine (Huh et al. 2023) against VQP's ``VectorQuantize(affine_param=True)`` in the peer test's
  EMA setting (decay 0.8, eps 1e-5, kaiming-uniform codebook copied, no k-means, no restarts), and
  with a learned codebook (``learnable_codebook=True, ema_update=False``, commitment weight 1).
"""

import math

import pytest
import torch
import torch.nn.functional as F

from rvq_cli.config import RecipeError, load_recipe
from rvq_cli.models import build_tokenizer
from rvq_cli.quantize import VectorQuantizer
from rvq_cli.quantize.parameterisations import Affine, Plain, SimVQ
from rvq_cli.schema import ModelConfig

vqp = pytest.importorskip("vector_quantize_pytorch")

D, K, B, N = 8, 16, 2, 48
TOL = 1e-6  # forward values (the peer's e + sg(q − e) and rotate_to are q up to rounding), gradients, weights
ROTATION_TRICK = {"ste": False, "rotation": True}


def batch(step: int, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    """(B, N, D) latents, a different batch every step (scaled and shifted away from the codes)."""
    return torch.randn(B, N, D, generator=torch.Generator().manual_seed(100 + step)) * scale + shift


def weights() -> torch.Tensor:
    return torch.randn(B, N, D, generator=torch.Generator().manual_seed(7))


def channel_first(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2).contiguous()  # (B, N, D) -> rvq's (B, D, N)


# ---------------------------------------------------------------- SimVQ


def simvq_pair(estimator: str):
    torch.manual_seed(0)
    peer = vqp.SimVQ(dim=D, codebook_size=K, rotation_trick=ROTATION_TRICK[estimator],
                     input_to_quantize_commit_loss_weight=0.25, commitment_weight=1.0)
    torch.manual_seed(1)
    ours = VectorQuantizer(D, K, estimator=estimator, update="learned", beta=0.25, codebook="simvq").train()
    assert isinstance(ours.parameterisation, SimVQ) and ours.vq_loss == "vqvae"
    with torch.no_grad():
        ours.codebook.copy_(peer.frozen_codebook)
        ours.parameterisation.weight.copy_(peer.code_transform.weight)
    return ours, peer


@pytest.mark.parametrize("estimator", ["ste", "rotation"])
def test_simvq_matches_vector_quantize_pytorch(estimator):
    ours, peer = simvq_pair(estimator)
    basis = ours.codebook.clone()
    assert [n for n, _ in ours.named_parameters()] == ["parameterisation.weight"]  # C is a buffer: only W trains
    w_ours, w_peer = ours.parameterisation.weight, peer.code_transform.weight
    opt_o, opt_p = torch.optim.Adam([w_ours], lr=1e-2), torch.optim.Adam([w_peer], lr=1e-2)
    w = weights()
    for step in range(3):
        x = batch(step)
        xo, xp = channel_first(x).requires_grad_(True), x.clone().requires_grad_(True)
        out = ours(xo)
        q_peer, idx_peer, loss_peer = peer(xp)
        torch.testing.assert_close(ours.codes(), peer.codebook.detach(), rtol=0, atol=TOL)  # C Wᵀ
        assert torch.equal(out.indices, idx_peer), step
        torch.testing.assert_close(out.quantized.transpose(1, 2), q_peer, rtol=0, atol=TOL)
        torch.testing.assert_close(out.loss, loss_peer, rtol=1e-6, atol=0)  # ‖sg(e) − q‖² + 0.25‖e − sg(q)‖²
        ((out.quantized.transpose(1, 2) * w).sum() + out.loss).backward()
        ((q_peer * w).sum() + loss_peer).backward()
        torch.testing.assert_close(xo.grad.transpose(1, 2), xp.grad, rtol=0, atol=TOL)
        assert w_ours.grad.abs().sum() > 0
        torch.testing.assert_close(w_ours.grad, w_peer.grad, rtol=0, atol=TOL)
        opt_o.step(), opt_p.step(), opt_o.zero_grad(), opt_p.zero_grad()
        torch.testing.assert_close(w_ours, w_peer, rtol=0, atol=TOL)
    assert torch.equal(ours.codebook, basis)  # the basis never moves


def test_simvq_draws_what_vector_quantize_pytorch_draws():
    """Basis N(0, 1/d) then W ~ nn.Linear's U(−1/√d, 1/√d), in the same order: equal under one seed."""
    torch.manual_seed(3)
    peer = vqp.SimVQ(dim=D, codebook_size=K)
    torch.manual_seed(3)
    ours = VectorQuantizer(D, K, codebook="simvq", update="learned")
    assert torch.equal(ours.codebook, peer.frozen_codebook)
    assert torch.equal(ours.parameterisation.weight, peer.code_transform.weight)
    assert ours.parameterisation.weight.abs().max() <= 1 / math.sqrt(D)
    big = VectorQuantizer(64, 4096, codebook="simvq", update="learned").codebook
    assert abs(float(big.std()) * 8 - 1) < 0.01  # std 1/√d


def test_simvq_with_cosine_lookup_uses_unit_mapped_codes():
    torch.manual_seed(0)
    vq = VectorQuantizer(D, K, update="learned", codebook="simvq", lookup="cosine").train()
    c = vq.codes()
    torch.testing.assert_close(c.norm(dim=-1), torch.ones(K))
    torch.testing.assert_close(c, F.normalize(vq.codebook @ vq.parameterisation.weight.t(), dim=-1))
    out = vq(channel_first(batch(0)).requires_grad_(True))
    out.loss.backward()
    assert vq.parameterisation.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------- affine


def affine_pair(estimator: str, update: str):
    learned = update == "learned"
    torch.manual_seed(0)
    peer = vqp.VectorQuantize(
        dim=D, codebook_size=K, decay=0.8, eps=1e-5, commitment_weight=1.0, kmeans_init=False,
        threshold_ema_dead_code=0, rotation_trick=ROTATION_TRICK[estimator], straight_through=False,
        stochastic_sample_codes=False, sync_codebook=False, learnable_codebook=learned, ema_update=not learned,
        affine_param=True, sync_affine_param=False, affine_param_batch_decay=0.99, affine_param_codebook_decay=0.9,
    ).train()
    cb = peer._codebook
    assert cb.affine_param and cb.ema_update is not learned and cb.learnable_codebook is learned
    torch.manual_seed(1)
    ours = VectorQuantizer(D, K, estimator=estimator, update=update, decay=0.8, beta=1.0, codebook="affine").train()
    assert isinstance(ours.parameterisation, Affine) and ours.eps == 1e-5
    with torch.no_grad():
        ours.codebook.copy_(cb.embed[0])
        ours.cluster_size.copy_(cb.cluster_size[0])
        if not learned:
            ours.embed_sum.copy_(cb.embed_avg[0])
    return ours, peer


def peer_affine_codes(peer) -> torch.Tensor:
    """The peer's codebook after its affine transform, from its state (its Codebook.forward's rule)."""
    cb = peer._codebook
    std = lambda v: v.clamp(min=1e-5).sqrt()  # noqa: E731
    return ((cb.embed - cb.codebook_mean) * (std(cb.batch_variance) / std(cb.codebook_variance)) + cb.batch_mean)[0]


def assert_same_statistics(ours, peer, step):
    a, cb = ours.parameterisation, peer._codebook
    for name in ("batch_mean", "batch_variance", "codebook_mean", "codebook_variance"):
        torch.testing.assert_close(getattr(a, name), getattr(cb, name).reshape(-1), rtol=1e-5, atol=1e-6,
                                   msg=lambda m, n=name: f"step {step} {n}: {m}")
    torch.testing.assert_close(ours.codebook, cb.embed[0], rtol=1e-5, atol=TOL)
    if ours.update == "ema":
        torch.testing.assert_close(ours.embed_sum, cb.embed_avg[0], rtol=1e-5, atol=TOL)
        torch.testing.assert_close(ours.cluster_size, cb.cluster_size[0], rtol=1e-5, atol=TOL)


@pytest.mark.parametrize("estimator", ["ste", "rotation"])
@pytest.mark.parametrize("update", ["ema", "learned"])
def test_affine_matches_vector_quantize_pytorch(estimator, update):
    ours, peer = affine_pair(estimator, update)
    params_o = [ours.codebook] if update == "learned" else []
    opt_o = torch.optim.Adam(params_o, lr=1e-2) if params_o else None
    opt_p = torch.optim.Adam([peer._codebook.embed], lr=1e-2) if params_o else None
    w = weights()
    for step in range(3):
        x = batch(step, scale=3.0, shift=2.0)  # latents far from the codes: the affine map has work to do
        xo, xp = channel_first(x).requires_grad_(True), x.clone().requires_grad_(True)
        out = ours(xo)
        q_peer, idx_peer, loss_peer = peer(xp)
        assert torch.equal(out.indices, idx_peer), step
        # the codes the lookup used are the affine codes: each row's output is its code
        torch.testing.assert_close(out.quantized.transpose(1, 2), q_peer, rtol=2e-6, atol=TOL)  # |q| up to ~8
        torch.testing.assert_close(out.losses.commitment, loss_peer, rtol=1e-6, atol=0)
        assert_same_statistics(ours, peer, step)
        torch.testing.assert_close(ours.codes(), peer_affine_codes(peer).detach(), rtol=2e-6, atol=TOL)
        ((out.quantized.transpose(1, 2) * w).sum() + out.loss).backward()
        ((q_peer * w).sum() + loss_peer).backward()
        # |grad| up to ~3: a few fp32 ulps apart where the two sum in another order (seen on an AMX Xeon)
        torch.testing.assert_close(xo.grad.transpose(1, 2), xp.grad, rtol=2e-6, atol=TOL)
        if opt_o is not None:
            torch.testing.assert_close(ours.codebook.grad, peer._codebook.embed.grad[0], rtol=0, atol=TOL)
            opt_o.step(), opt_p.step(), opt_o.zero_grad(), opt_p.zero_grad()
            torch.testing.assert_close(ours.codebook, peer._codebook.embed[0].detach(), rtol=0, atol=TOL)
    assert out.metrics.usage > 2 / K  # the latents were moved onto several codes


def test_affine_codes_are_the_scaled_and_shifted_codebook():
    torch.manual_seed(0)
    vq = VectorQuantizer(D, K, codebook="affine").train()
    raw = vq.codebook.clone()
    assert torch.equal(vq.codes(), raw)  # before the first training step the map is the identity
    vq(channel_first(batch(0, scale=3.0, shift=2.0)))
    a = vq.parameterisation
    assert bool(a.initialized)
    e = batch(0, scale=3.0, shift=2.0).reshape(-1, D)
    torch.testing.assert_close(a.batch_mean, e.mean(0))  # the first step sets the statistics
    torch.testing.assert_close(a.batch_variance, e.var(0, unbiased=False))
    torch.testing.assert_close(a.codebook_mean, raw.mean(0))
    std = lambda v: v.clamp_min(1e-5).sqrt()  # noqa: E731
    expect = (vq.codebook - a.codebook_mean) * std(a.batch_variance) / std(a.codebook_variance) + a.batch_mean
    torch.testing.assert_close(vq.codes(), expect)
    torch.testing.assert_close(a.to_stored(vq.codes()), vq.codebook, rtol=1e-5, atol=1e-5)  # inverse maps


def test_affine_statistics_move_in_training_only_and_stay_fp32():
    torch.manual_seed(0)
    vq = VectorQuantizer(D, K, codebook="affine").train()
    vq(channel_first(batch(0)))
    before = {k: v.clone() for k, v in vq.state_dict().items()}
    vq.eval()(channel_first(batch(1, shift=5.0)))
    assert all(torch.equal(before[k], v) for k, v in vq.state_dict().items())
    vq.half()
    assert all(getattr(vq.parameterisation, n).dtype == torch.float32
               for n in ("batch_mean", "batch_variance", "codebook_mean", "codebook_variance"))


# ---------------------------------------------------------------- plain, state, round trips


def test_plain_is_what_it_was():
    for update, keys in (("ema", {"codebook", "embed_sum", "cluster_size", "initialized"}),
                         ("learned", {"codebook", "cluster_size", "initialized"})):
        torch.manual_seed(0)
        a = VectorQuantizer(D, K, update=update)
        torch.manual_seed(0)
        b = VectorQuantizer(D, K, update=update, codebook="plain")
        assert isinstance(b.parameterisation, Plain) and set(b.state_dict()) == keys
        assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
        assert b.codes() is not None and torch.equal(b.codes(), b.codebook)
        x = channel_first(batch(0))
        assert torch.equal(a.train()(x).quantized, b.train()(x).quantized)


CASES = {
    "simvq": dict(codebook="simvq", update="learned", beta=0.25),
    "simvq_cosine_factorised": dict(codebook="simvq", update="learned", lookup="cosine", codebook_dim=4),
    "affine_ema": dict(codebook="affine"),
    "affine_learned": dict(codebook="affine", update="learned"),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("estimator", ["ste", "rotation", "gumbel"])
def test_tokens_decode_to_what_the_forward_returned_bit_for_bit(case, estimator):
    torch.manual_seed(0)
    vq = VectorQuantizer(D, K, estimator=estimator, **CASES[case]).train()
    params = list(vq.parameters())  # W or a learned codebook (gumbel: none with an EMA codebook)
    opt = torch.optim.Adam(params, lr=1e-2) if params else None
    for step in range(3):  # moves W, a learned codebook, the EMA codes and the affine statistics
        out = vq(channel_first(batch(step, shift=1.0)).requires_grad_(True))
        (out.quantized.square().mean() + out.loss).backward()
        if opt is not None:
            opt.step(), opt.zero_grad()
    vq.eval()
    for dtype in (torch.float32, torch.bfloat16):
        out = vq(channel_first(batch(9, shift=1.0)).to(dtype))
        assert torch.equal(out.quantized, vq.indices_to_codes(out.indices, dtype=out.quantized.dtype)), dtype


@pytest.mark.parametrize("case", CASES)
def test_a_state_dict_reloads_the_same_codes(case):
    torch.manual_seed(0)
    a = VectorQuantizer(D, K, **CASES[case]).train()
    a(channel_first(batch(0, shift=1.0)))
    torch.manual_seed(1)
    b = VectorQuantizer(D, K, **CASES[case])
    assert not torch.equal(a.codes(), b.codes())
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.codes(), b.codes())
    names = set(a.state_dict())
    assert ("parameterisation.weight" in names) is (CASES[case]["codebook"] == "simvq")
    assert ("parameterisation.batch_mean" in names) is (CASES[case]["codebook"] == "affine")


def test_the_layer_refuses_what_a_parameterisation_cannot_do():
    for kwargs, words in ((dict(codebook="simvq"), "update='learned'"),
                          (dict(codebook="simvq", update="learned", init="kmeans"), "init"),
                          (dict(codebook="simvq", update="learned", dead_code_threshold=1.0), "dead_code_threshold"),
                          (dict(codebook="affine", lookup="cosine"), "euclidean"),
                          (dict(codebook="affine", affine_batch_decay=1.0), "affine_batch_decay"),
                          (dict(codebook="square"), "valid: plain, simvq, affine")):
        with pytest.raises(ValueError, match=words):
            VectorQuantizer(D, K, **kwargs)


def test_affine_restarts_dead_codes_at_the_latents():
    torch.manual_seed(0)
    vq = VectorQuantizer(D, K, codebook="affine", dead_code_threshold=1e9).train()
    x = batch(0, scale=3.0, shift=2.0)
    out = vq(channel_first(x))
    assert out.metrics.restarted == K
    rows = x.reshape(-1, D)
    codes = vq.codes()  # every restarted code, mapped, is one of the batch's latents
    d = torch.cdist(codes.double(), rows.double()).min(dim=1).values
    assert d.max() < 1e-4


# ---------------------------------------------------------------- recipes and tokenizers


def recipe_problems(tmp_path, *overrides):
    p = tmp_path / "r.yaml"
    p.write_text("{}\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(p, list(overrides), check_paths=False)
    return {q.path: q.message for q in info.value.problems}


@pytest.mark.parametrize("overrides, path, words", [
    (["model.quantizer.codebook=simvq"], "model.quantizer.update", "update: learned"),
    (["model.quantizer.codebook=simvq", "model.quantizer.update=learned", "model.quantizer.init=normal"],
     "model.quantizer.init", "N(0, 1/d)"),
    (["model.quantizer.codebook=simvq", "model.quantizer.update=learned", "model.quantizer.dead_code_threshold=1"],
     "model.quantizer.dead_code_threshold", "no stored codes"),
    (["model.quantizer.codebook=affine", "model.quantizer.lookup=cosine"], "model.quantizer.lookup", "euclidean"),
    (["model.quantizer.affine_batch_decay=0.5"], "model.quantizer.affine_batch_decay", "codebook affine only"),
    (["model.quantizer.codebook=simvq", "model.quantizer.update=learned", "model.quantizer.affine_sync=false"],
     "model.quantizer.affine_sync", "codebook affine only"),
])
def test_recipes_refuse_what_would_be_ignored_or_meaningless(tmp_path, overrides, path, words):
    problems = recipe_problems(tmp_path, *overrides)
    assert path in problems and words in problems[path], problems


def test_recipes_accept_both_and_pass_them_to_the_layer(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("{}\n")
    small = ["model.encoder.ch=8", "model.encoder.ch_mult=[1, 2]", "model.encoder.num_res_blocks=1",
             "model.encoder.attn_resolutions=[]", "model.encoder.z_channels=4", "model.encoder.norm_groups=4",
             "model.quantizer.dim=4", "data.image_size=16"]
    r = load_recipe(p, small + ["model.quantizer.codebook=affine", "model.quantizer.affine_batch_decay=0.95",
                                "model.quantizer.affine_sync=false"], check_paths=False)
    a = build_tokenizer(r.model, image_size=16).quantize.parameterisation
    assert isinstance(a, Affine) and (a.batch_decay, a.codebook_decay, a.sync) == (0.95, 0.9, False)
    s = load_recipe(p, small + ["model.quantizer.codebook=simvq", "model.quantizer.update=learned"], check_paths=False)
    assert isinstance(build_tokenizer(s.model, image_size=16).quantize.parameterisation, SimVQ)


def test_affine_sync_is_the_same_in_one_process():
    runs = []
    for sync in (True, False):
        torch.manual_seed(0)
        vq = VectorQuantizer(D, K, codebook="affine", affine_sync=sync).train()
        for step in range(2):
            vq(channel_first(batch(step, shift=1.0)))
        runs.append(vq.state_dict())
    assert all(torch.equal(v, runs[1][k]) for k, v in runs[0].items())


FAMILIES = {
    "conv": dict(name="conv", encoder=dict(ch=8, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[],
                                           z_channels=4, norm_groups=4)),
    "vit": dict(name="vit", vit=dict(patch_size=4, dim=32, depth=1, heads=4, mlp_dim=64)),
    "timesformer": dict(name="timesformer", timesformer=dict(patch_size=4, dim=32, depth=1, heads=4, mlp_dim=64)),
}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("codebook", ["simvq", "affine"])
def test_every_tokenizer_trains_and_decodes_its_tokens(family, codebook):
    update = "learned" if codebook == "simvq" else "ema"
    model = ModelConfig.model_validate({**FAMILIES[family], "quantizer": dict(
        codebook_size=16, dim=8, codebook=codebook, update=update, estimator="rotation")})
    torch.manual_seed(0)
    tok = build_tokenizer(model, image_size=16, frames=4).train()
    shape = (2, 3, 4, 16, 16) if family == "timesformer" else (2, 3, 16, 16)
    x = torch.tanh(torch.randn(shape, generator=torch.Generator().manual_seed(1)))
    out = tok(x)
    (F.mse_loss(out.reconstruction, x) + out.quantize.loss).backward()
    for name, p in tok.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    if codebook == "simvq":
        assert tok.quantize.parameterisation.weight.grad.abs().sum() > 0
    else:
        assert bool(tok.quantize.parameterisation.initialized)
    tok.eval()
    with torch.no_grad():
        assert torch.equal(tok(x).reconstruction, tok.decode_indices(tok.encode(x)))
