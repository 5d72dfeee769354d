"""The upstream variants of the rotation-trick code (docs/reproduction.md), each against its
upstream forward pass written out here with autograd in float64 (R formed as a d×d matrix):

- rotation_released / rotation_unscaled_released: cfifty/rotation_trick's table_3 rot_vqgan.py
  (rot_trick, no_grad_scale), which detach R and ‖q‖ but not ê = e/‖e‖;
- ste_raw: enhancing-transformers' STE under l2-normalised lookup (z + sg(ĉ − z), g to z);
- cosine_output="renormalize": the official Table 1 model's q̃/‖q̃‖ after the estimator;
- ema_counts="zeros": vector-quantize-pytorch's zero-initialised cluster sizes;
- cosine_init="as_drawn": enhancing-transformers' N(0, 1) codes, normalised only at lookup.
"""

import pytest
import torch
import torch.nn.functional as F

from rvq_cli.quantize import ESTIMATORS, VectorQuantizer, get_estimator


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def householder_r(e: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """R = I − 2rrᵀ + 2q̂êᵀ per row, (N, d, d), from detached unit vectors."""
    eh, qh = F.normalize(e.detach(), dim=-1), F.normalize(q.detach(), dim=-1)
    r = F.normalize(eh + qh, dim=-1)
    eye = torch.eye(e.shape[-1], dtype=e.dtype).expand(e.shape[0], -1, -1)
    return eye - 2 * r[:, :, None] * r[:, None, :] + 2 * qh[:, :, None] * eh[:, None, :]


def upstream_rot_trick(e, q):
    """rot_vqgan.py, rot_trick: sg(R)·(e/‖e‖)·sg(‖q‖) — ê keeps its graph."""
    eh = e / e.norm(dim=-1, keepdim=True)
    return torch.einsum("nij,nj->ni", householder_r(e, q), eh) * q.detach().norm(dim=-1, keepdim=True)


def upstream_no_grad_scale(e, q):
    """rot_vqgan.py, no_grad_scale: sg(R)ê + sg(q − Rê)."""
    eh = e / e.norm(dim=-1, keepdim=True)
    rot = torch.einsum("nij,nj->ni", householder_r(e, q), eh)
    return rot + (q - rot).detach()


def grad_of(fn, e, q, g):
    e = e.clone().requires_grad_(True)
    out = fn(e, q)
    out.backward(g)
    return out.detach(), e.grad


@pytest.mark.parametrize("name, upstream", [("rotation_released", upstream_rot_trick),
                                            ("rotation_unscaled_released", upstream_no_grad_scale)])
@pytest.mark.parametrize("d", [3, 4, 32])
def test_released_rotation_equals_the_released_code(name, upstream, d):
    e, q, g = rand(64, d, seed=1), rand(64, d, seed=2) * 0.7, rand(64, d, seed=3)
    ref_value, ref_grad = grad_of(upstream, e, q, g)
    value, grad = grad_of(get_estimator(name), e, q, g)
    assert torch.equal(value, q)  # rvq's forward value is q bit for bit
    torch.testing.assert_close(ref_value, q, rtol=1e-12, atol=1e-12)  # upstream's equals it up to rounding
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)


def test_released_rotation_drops_the_radial_part_and_differs_from_the_paper_form():
    e, q, g = rand(256, 4, seed=4), rand(256, 4, seed=5), rand(256, 4, seed=6)
    _, rel = grad_of(get_estimator("rotation_released"), e, q, g)
    _, paper = grad_of(get_estimator("rotation"), e, q, g)
    eh, qh = F.normalize(e, dim=-1), F.normalize(q, dim=-1)
    assert (rel * eh).sum(-1).abs().max() < 1e-12  # ê·grad_e = 0: the loss never changes ‖e‖
    # λ(I − êêᵀ)Rᵀg = λRᵀ(I − q̂q̂ᵀ)g: the paper form applied to g without its part along q
    _, paper_tangent = grad_of(get_estimator("rotation"), e, q, g - qh * (qh * g).sum(-1, keepdim=True))
    torch.testing.assert_close(rel, paper_tangent, rtol=1e-10, atol=1e-12)
    assert (rel - paper).norm() > 0.1 * paper.norm()


def test_released_variants_keep_the_fallback_rows():
    e = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    q = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.0, 0.0]], dtype=torch.float64)  # zero e; antiparallel
    g = rand(2, 3, seed=7)
    for name in ("rotation_released", "rotation_unscaled_released"):
        est = get_estimator(name)
        _, grad = grad_of(est, e, q, g)
        assert torch.equal(grad, g) and int(est.count_fallbacks(e, q)) == 2


@pytest.mark.parametrize("estimator", ["ste", "ste_raw", "rotation"])
@pytest.mark.parametrize("cosine_output", ["as_is", "renormalize"])
def test_cosine_lookup_variants_against_their_upstream_forward(estimator, cosine_output):
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 16, estimator=estimator, lookup="cosine", update="learned", beta=0.0,
                         cosine_output=cosine_output).double()
    z = rand(2, 8, 3, 3, seed=8).mul(3).requires_grad_(True)
    g = rand(2, 8, 3, 3, seed=9)
    out = vq(z)
    out.quantized.backward(g)
    codes = vq.codes().detach()
    x = z.detach().movedim(1, -1).reshape(-1, 8).requires_grad_(True)  # (N, D) rows
    c = codes[out.indices.reshape(-1)]
    xh = F.normalize(x, dim=-1)
    if estimator == "ste":  # enhancing-transformers / Table 1: estimator on the normalised e
        qt = xh + (c - xh).detach()
    elif estimator == "ste_raw":  # enhancing-transformers' STE: on the raw z
        qt = x + (c - x).detach()
    else:
        qt = torch.einsum("nij,nj->ni", householder_r(xh, c), xh)  # Table 1 code: sg(λR)e, λ = 1 here
        qt = qt + (c - qt).detach()
    if cosine_output == "renormalize":
        qt = F.normalize(qt, dim=-1)
    qt.backward(g.movedim(1, -1).reshape(-1, 8))
    want = x.grad.reshape(2, 3, 3, 8).movedim(-1, 1)
    torch.testing.assert_close(z.grad, want, rtol=1e-5, atol=1e-7)  # the layer computes in fp32
    assert torch.equal(out.quantized, vq.indices_to_codes(out.indices, torch.float64))  # value: the code


def test_renormalize_changes_ste_but_not_rotation():
    def grad(estimator, cosine_output):
        torch.manual_seed(0)
        vq = VectorQuantizer(8, 16, estimator=estimator, lookup="cosine", cosine_output=cosine_output).double()
        z = rand(4, 8, 5, 5, seed=10).requires_grad_(True)
        vq(z).quantized.backward(rand(4, 8, 5, 5, seed=11))
        return z.grad

    assert (grad("ste", "renormalize") - grad("ste", "as_is")).abs().max() > 1e-3
    torch.testing.assert_close(grad("rotation", "renormalize"), grad("rotation", "as_is"), rtol=1e-5, atol=1e-7)


def test_ste_raw_is_ste_under_euclidean_lookup():
    assert ESTIMATORS["ste_raw"].acts_on == "raw" and ESTIMATORS["ste"].acts_on == "normalized"
    grads = []
    for name in ("ste", "ste_raw"):
        torch.manual_seed(0)
        vq = VectorQuantizer(8, 16, estimator=name)
        z = rand(2, 8, 3, 3, seed=12).float().requires_grad_(True)
        vq(z).quantized.backward(rand(2, 8, 3, 3, seed=13).float())
        grads.append(z.grad)
    assert torch.equal(grads[0], grads[1])


def test_zero_ema_counts_send_unused_codes_away_then_to_the_origin():
    """vector-quantize-pytorch's zero-initialised counts: after the first update a code never
    chosen is its decayed sum over a smoothed count ~ε, so it jumps far out of reach; then it
    shrinks by the decay each update. With counts at one it stays where it was until 0.8ᵗ ~ ε.
    Either way the unused codes end near the origin."""
    def run(counts, steps):
        torch.manual_seed(0)
        vq = VectorQuantizer(4, 64, decay=0.8, ema_counts=counts)
        init = vq.codebook.clone()
        z = rand(8, 4, 4, 4, seed=14).float() + 5.0  # far from every code: a few codes take all rows
        for _ in range(steps):
            out = vq(z)
        unused = torch.ones(64, dtype=torch.bool)
        unused[out.indices.unique()] = False
        assert unused.sum() > 40
        return vq.codebook[unused].norm(dim=-1) / init[unused].norm(dim=-1)

    assert torch.equal(VectorQuantizer(4, 64, ema_counts="zeros").cluster_size, torch.zeros(64))
    assert run("zeros", 1).min() > 1e3  # 0.8 e₀ / ~ε: out of reach
    ratio = run("ones", 1)
    assert ratio.min() > 0.75 and ratio.max() < 1.25  # 0.8 e₀ / (0.8 + ε): where it was
    assert run("zeros", 120).max() < 1e-3 and run("ones", 120).max() < 1e-3  # 0.8¹²⁰ ≪ ε: at the origin
    with pytest.raises(ValueError, match="ema_counts"):
        VectorQuantizer(4, 8, ema_counts="half")


def test_codes_stored_as_drawn_get_the_upstream_codebook_gradient():
    """enhancing-transformers' quantizer (quantizers.py): an nn.Embedding drawn N(0, 1) and kept so;
    lookup, commitment (β = 0.25) and codebook terms all on l2-normalised vectors. Same draws, same
    input: the same indices and the same gradient to the stored (unnormalised) codebook."""
    torch.manual_seed(3)
    vq = VectorQuantizer(8, 16, estimator="ste", lookup="cosine", update="learned", beta=0.25, init="normal",
                         cosine_init="as_drawn").double()
    stored = vq.codebook.detach().clone()
    norms = stored.norm(dim=-1)
    assert norms.min() > 1.1 and abs(float(norms.mean()) - 8**0.5) < 1.0  # ≈ √d, not unit
    torch.manual_seed(3)
    unit = VectorQuantizer(8, 16, estimator="ste", lookup="cosine", update="learned", init="normal")
    torch.testing.assert_close(unit.codebook.detach().double(), F.normalize(stored, dim=-1))

    z = rand(4, 8, 3, 3, seed=1)
    out = vq(z)
    (out.loss).backward()

    weight = stored.clone().requires_grad_(True)
    flat = z.movedim(1, -1).reshape(-1, 8)
    zn, wn = F.normalize(flat, dim=-1), F.normalize(weight, dim=-1)
    dist = (zn**2).sum(1, keepdim=True) + (wn**2).sum(1) - 2 * zn @ wn.t()
    idx = dist.argmin(1)
    qn = F.normalize(weight[idx], dim=-1)
    loss = 0.25 * ((qn.detach() - zn) ** 2).mean() + ((qn - zn.detach()) ** 2).mean()
    loss.backward()
    assert torch.equal(out.indices.reshape(-1), idx)
    torch.testing.assert_close(vq.codebook.grad, weight.grad)
    assert float(weight.grad.norm()) > 0


def test_cosine_init_is_refused_when_unknown():
    with pytest.raises(ValueError, match="cosine_init"):
        VectorQuantizer(4, 8, lookup="cosine", cosine_init="raw")
