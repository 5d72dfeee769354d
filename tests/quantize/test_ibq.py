"""IBQ (arXiv 2412.02692) against its equations written out, as TencentARC/SEED-Voken's
IndexPropagationQuantize computes them (there is no installable peer implementation):

    l = z·C,  p = softmax(l),  h = onehot(argmax l),  z_q = (h − sg(p) + p) C,  z_q2 = h C,
    loss = mean(z_q − z)² + mean(sg(z_q2) − z)² + β mean(z_q2 − sg(z))²,

plus MAGVIT-2's entropy term H(softmax(l/τ)) per row minus H of the batch mean."""

import copy

import pytest
import torch
import torch.nn.functional as F

from rvq_cli.quantize import ESTIMATORS, VectorQuantizer
from rvq_cli.quantize.estimators.ibq import entropy_terms, soft_codes

D, K = 6, 20


def upstream(z, C, beta, weight=0.0, tau=0.01, eps=1e-5):
    """(z_q, indices, loss) for rows z (N, d) and codebook C (K, d), written out."""
    logits = z @ C.t()
    p = logits.softmax(-1)
    idx = p.argmax(-1)
    hard = F.one_hot(idx, C.shape[0]).to(z.dtype)
    z_q = (hard - p.detach() + p) @ C
    z_q2 = hard @ C
    loss = ((z_q - z) ** 2).mean() + ((z_q2.detach() - z) ** 2).mean() + beta * ((z_q2 - z.detach()) ** 2).mean()
    if weight:
        pt = (logits / tau).softmax(-1)
        sample = -(pt * F.log_softmax(logits / tau + eps, -1)).sum(-1).mean()
        avg = pt.mean(0)
        loss = loss + weight * (sample + (avg * torch.log(avg + eps)).sum())
    return z_q, idx, loss


def layer(chunk=None, **kw):
    torch.manual_seed(0)
    vq = VectorQuantizer(D, K, estimator="ibq", update="learned", vq_loss="taming_legacy", beta=0.25, **kw).train()
    if chunk:
        vq.chunk = chunk
    return vq


@pytest.mark.parametrize("chunk", [None, 3 * K])  # one block, or blocks of 3 rows
@pytest.mark.parametrize("weight", [0.0, 0.05])
def test_the_layer_is_the_upstream_quantizer(chunk, weight):
    vq = layer(chunk, ibq_entropy_weight=weight)
    C = vq.codebook.detach().clone().requires_grad_(True)
    x = torch.randn(2, 11, D, generator=torch.Generator().manual_seed(1))
    w = torch.randn(2, 11, D, generator=torch.Generator().manual_seed(2))
    z = x.transpose(1, 2).contiguous().requires_grad_(True)  # rvq: (B, D, N)
    out = vq(z)
    ((out.quantized.transpose(1, 2) * w).sum() + out.loss).backward()
    zr = x.reshape(-1, D).clone().requires_grad_(True)
    z_q, idx, loss = upstream(zr, C, 0.25, weight)
    ((z_q * w.reshape(-1, D)).sum() + loss).backward()
    assert torch.equal(out.indices.reshape(-1), idx)
    torch.testing.assert_close(out.quantized.transpose(1, 2).reshape(-1, D), z_q.detach(), rtol=0, atol=1e-6)
    assert torch.equal(out.quantized, copy.deepcopy(vq).eval().indices_to_codes(out.indices))  # q bit for bit
    torch.testing.assert_close(out.loss, loss.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(z.grad.transpose(1, 2).reshape(-1, D), zr.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(vq.codebook.grad, C.grad, rtol=1e-4, atol=1e-6)
    assert (vq.codebook.grad.abs().sum(-1) > 0).all()  # every code receives gradient, chosen or not


def test_blocks_bound_the_softmax_and_change_nothing():
    e = torch.randn(50, D, dtype=torch.float64, requires_grad=True)
    C = torch.randn(K, D, dtype=torch.float64, requires_grad=True)
    g = torch.randn(50, D, dtype=torch.float64)
    grads = []
    for chunk in (1 << 22, 7 * K):
        y = soft_codes(e, C, "dot", chunk)
        de, dc = torch.autograd.grad(y, (e, C), g)
        grads.append((y.detach(), de, dc))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
    s1, b1 = entropy_terms(e, C, "dot", 0.5, chunk=1 << 22)
    s2, b2 = entropy_terms(e, C, "dot", 0.5, chunk=2 * K)
    torch.testing.assert_close(s1, s2)
    torch.testing.assert_close(b1, b2)


def test_distance_logits_pick_the_nearest_code_and_dot_logits_their_argmax():
    z = torch.randn(3, D, 9, generator=torch.Generator().manual_seed(3))
    rows = z.movedim(1, -1).reshape(-1, D)
    near = layer(ibq_logits="distance")
    assert torch.equal(near(z).indices.reshape(-1), torch.cdist(rows, near.codebook.detach()).argmin(-1))
    dot = layer()
    assert torch.equal(dot(z).indices.reshape(-1), (rows @ dot.codebook.detach().t()).argmax(-1))


def test_eval_is_the_hard_code_and_the_entry_says_what_it_is():
    vq = layer().eval()
    z = torch.randn(2, D, 5)
    out = vq(z)
    assert torch.equal(out.quantized, vq.indices_to_codes(out.indices))
    est = ESTIMATORS["ibq"]
    assert est.kind == "codebook-wide" and "2412.02692" in est.section
    assert set(est.own_options) == {"ibq_logits", "ibq_entropy_weight", "ibq_entropy_temperature"}
    with pytest.raises(ValueError, match="ibq_logits"):
        VectorQuantizer(D, K, estimator="ibq", ibq_logits="cosine")
