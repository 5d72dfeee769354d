"""DiVeQ (arXiv 2509.26469) against vector-quantize-pytorch's VectorQuantize with
``directional_reparam=True`` (the peer's whole layer: same codebook, same input, same noise draw),
and against its equation written out: q̃ = e + ‖q − e‖ · sg(unit(q − e + v)), v ~ N(0, σ²I)."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from rvq_cli.quantize import ESTIMATORS, VectorQuantizer
from rvq_cli.quantize.estimators.diveq import DIVEQ_NOISE_STD, diveq

vqp = pytest.importorskip("vector_quantize_pytorch")

D, K, N = 6, 12, 40


VQP_VARIANCE = 5e-3  # vector-quantize-pytorch's default directional_reparam_variance = σ²


def pair(variance=VQP_VARIANCE):
    torch.manual_seed(0)
    ours = VectorQuantizer(D, K, estimator="diveq", update="learned", beta=0.0,
                           diveq_noise_std=math.sqrt(variance)).train()
    # commitment_weight 0: DiVeQ as published has no commitment term; a tiny dead-code threshold,
    # which the peer requires with directional_reparam, that no code reaches in these steps
    peer = vqp.VectorQuantize(dim=D, codebook_size=K, directional_reparam=True, directional_reparam_variance=variance,
                              threshold_ema_dead_code=1e-12, commitment_weight=0.0).train()
    with torch.no_grad():
        peer._codebook.embed.copy_(ours.codebook[None])
    return ours, peer


def test_the_layer_matches_vector_quantize_pytorch_forward_gradients_and_codebook_updates():
    ours, peer = pair()
    opt_o = torch.optim.Adam(ours.parameters(), lr=1e-2)
    opt_p = torch.optim.Adam([peer._codebook.embed], lr=1e-2)
    w = torch.randn(2, N, D, generator=torch.Generator().manual_seed(1))
    for step in range(3):
        x = torch.randn(2, N, D, generator=torch.Generator().manual_seed(10 + step))
        xo = x.transpose(1, 2).contiguous().requires_grad_(True)  # rvq: (B, D, *spatial)
        xp = x.clone().requires_grad_(True)  # peer: (B, N, D)
        torch.manual_seed(5 + step)  # the noise on the direction: one randn draw of shape (N, D) in both
        out = ours(xo)
        torch.manual_seed(5 + step)
        q_peer, idx_peer, _ = peer(xp)
        assert torch.equal(out.indices.reshape(-1), idx_peer.reshape(-1)), step
        torch.testing.assert_close(out.quantized.transpose(1, 2), q_peer, rtol=0, atol=1e-6)
        (out.quantized.transpose(1, 2) * w).sum().backward()
        (q_peer * w).sum().backward()
        torch.testing.assert_close(xo.grad.transpose(1, 2), xp.grad, rtol=0, atol=1e-6)
        assert ours.codebook.grad.abs().sum() > 0  # the codebook learns through the distortion's magnitude
        torch.testing.assert_close(ours.codebook.grad, peer._codebook.embed.grad[0], rtol=0, atol=1e-6)
        opt_o.step(), opt_p.step(), opt_o.zero_grad(), opt_p.zero_grad()
        torch.testing.assert_close(ours.codebook, peer._codebook.embed[0].detach(), rtol=0, atol=1e-6)


def test_the_gradients_are_those_of_the_equation():
    g64 = torch.Generator().manual_seed(2)
    e = torch.randn(30, 5, generator=g64, dtype=torch.float64, requires_grad=True)
    q = torch.randn(30, 5, generator=g64, dtype=torch.float64, requires_grad=True)
    g = torch.randn(30, 5, generator=g64, dtype=torch.float64)
    out = diveq(e, q, 0.1, generator=torch.Generator().manual_seed(3))
    out.backward(g)
    v = torch.randn(30, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 0.1
    d = (q - e).detach()
    u = F.normalize(d + v, dim=-1, eps=1e-6)
    n = d.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(out.detach(), e.detach() + u * n)
    ug = (u * g).sum(-1, keepdim=True)
    torch.testing.assert_close(e.grad, g - d * ug / n)  # ∂/∂e of e + ‖q − e‖u
    torch.testing.assert_close(q.grad, d * ug / n)  # ∂/∂q: through the magnitude only


def test_without_noise_the_sample_is_the_code_up_to_rounding_and_eval_is_the_code_bit_for_bit():
    ours, _ = pair(variance=0.0)
    z = torch.randn(2, D, 7, generator=torch.Generator().manual_seed(4))
    out = ours(z)
    torch.testing.assert_close(out.quantized, copy.deepcopy(ours).eval().indices_to_codes(out.indices),
                               rtol=0, atol=1e-6)
    ours.eval()
    hard = ours(z)
    assert torch.equal(hard.quantized, ours.indices_to_codes(hard.indices))


def test_a_row_on_its_code_has_finite_gradients():
    e = torch.zeros(3, 4, requires_grad=True)
    q = torch.zeros(3, 4, requires_grad=True)
    out = diveq(e, q)
    out.sum().backward()
    assert torch.equal(out, torch.zeros(3, 4))
    assert torch.isfinite(e.grad).all() and torch.isfinite(q.grad).all()


def test_the_registry_entry_says_what_it_is():
    est = ESTIMATORS["diveq"]
    assert est.kind == "stochastic" and est.own_options == ("diveq_noise_std",)
    assert "2509.26469" in est.section
    assert VectorQuantizer(D, K, estimator="diveq").diveq_noise_std == DIVEQ_NOISE_STD == 1e-3  # the authors' code
    with pytest.raises(ValueError, match="diveq_noise_std"):
        VectorQuantizer(D, K, estimator="diveq", diveq_noise_std=math.nan)


def test_sf_diveq_is_the_authors_equations():
    """AaltoML/DiVeQ's SF-DiVeQ training forward, written out: a point drawn on each segment
    between consecutive codes, rows assigned to the nearest point, and DiVeQ's distortion toward
    both ends of the segment weighted by the draw. At evaluation rvq decodes the nearest code."""
    torch.manual_seed(0)
    vq = VectorQuantizer(D, K, estimator="sf_diveq", update="learned", beta=0.0).train()
    C = vq.codebook.detach().clone().requires_grad_(True)
    x = torch.randn(2, N, D, generator=torch.Generator().manual_seed(1))
    w = torch.randn(2, N, D, generator=torch.Generator().manual_seed(2))
    z = x.transpose(1, 2).contiguous().requires_grad_(True)
    torch.manual_seed(7)
    out = vq(z)
    (out.quantized.transpose(1, 2) * w).sum().backward()

    torch.manual_seed(7)
    e = x.reshape(-1, D).clone().requires_grad_(True)
    lam = torch.rand(K - 1, 1)
    points = (1 - lam) * C[:-1].detach() + lam * C[1:].detach()
    idx = torch.cdist(e.detach(), points).argmin(-1)
    c1, c2, lam_row = C[idx], C[idx + 1], lam[idx]
    v1 = torch.randn(e.shape) * 1e-3
    d1 = c1 - e
    t1 = d1.norm(dim=-1, keepdim=True) * F.normalize(d1 + v1, dim=-1, eps=1e-12).detach()
    v2 = torch.randn(e.shape) * 1e-3
    d2 = c2 - e
    t2 = d2.norm(dim=-1, keepdim=True) * F.normalize(d2 + v2, dim=-1, eps=1e-12).detach()
    z_q = e + (1 - lam_row) * t1 + lam_row * t2
    (z_q * w.reshape(-1, D)).sum().backward()

    assert torch.equal(out.indices.reshape(-1), idx) and int(idx.max()) <= K - 2
    torch.testing.assert_close(out.quantized.transpose(1, 2).reshape(-1, D), z_q.detach(), rtol=0, atol=1e-6)
    torch.testing.assert_close(z.grad.transpose(1, 2).reshape(-1, D), e.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(vq.codebook.grad, C.grad, rtol=1e-5, atol=1e-6)
    vq.eval()
    hard = vq(z.detach())
    assert torch.equal(hard.quantized, vq.indices_to_codes(hard.indices))
    assert torch.equal(hard.indices.reshape(-1), torch.cdist(x.reshape(-1, D), vq.codebook.detach()).argmin(-1))
