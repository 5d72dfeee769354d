"""Estimators: bit-equal forward, backward formulas, angle preservation, degenerate rows."""

import math
import os

os.environ.setdefault("RVQ_COMPILE", "never")

import pytest
import torch

from rvq_cli.quantize import ESTIMATORS, GAMMAS, POINTWISE, get_estimator, reflection_vjp, rotation_vjp, set_compile
from rvq_cli.quantize.estimators import ANGLE_EPS, get_compile

ALL = list(POINTWISE)
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


def rand(*shape, dtype=torch.float64, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def rotation_matrix(e, q):
    """R = I − 2rrᵀ + 2q̂êᵀ built explicitly (paper §4.2, A.5), for one row."""
    eh, qh = e / e.norm(), q / q.norm()
    r = (eh + qh) / (eh + qh).norm()
    return torch.eye(e.numel(), dtype=e.dtype) - 2 * torch.outer(r, r) + 2 * torch.outer(qh, eh)


def reflection_matrix(e, q):
    """I − 2ssᵀ with s = (ê − q̂)/‖ê − q̂‖ (A.8), for one row."""
    eh, qh = e / e.norm(), q / q.norm()
    s = (eh - qh) / (eh - qh).norm()
    return torch.eye(e.numel(), dtype=e.dtype) - 2 * torch.outer(s, s)


def grad_of(name_or_est, e, q, g, **kw):
    est = get_estimator(name_or_est, **kw) if isinstance(name_or_est, str) else name_or_est
    e = e.clone().requires_grad_(True)
    q = q.clone().requires_grad_(True)
    est(e, q).backward(g)
    return e.grad, q.grad


def angle(a, b):
    return torch.acos(((a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))).clamp(-1, 1))


# ---------------------------------------------------------------- forward


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7, 3), (2, 5, 4), (2, 3, 4, 32), (1, 256)])
def test_forward_is_q_bit_for_bit(name, dtype, shape):
    e = rand(*shape, dtype=dtype, seed=1).requires_grad_(True)
    q = rand(*shape, dtype=dtype, seed=2)
    out = ESTIMATORS[name](e, q)
    assert out.dtype == q.dtype and out.shape == q.shape
    assert torch.equal(out, q)
    out.sum().backward()  # and a backward in that dtype works
    assert e.grad.dtype == dtype and torch.isfinite(e.grad).all()


@pytest.mark.parametrize("name", ALL)
def test_nothing_flows_to_the_codebook(name):
    e, q, g = rand(16, 8, seed=1), rand(16, 8, seed=2), rand(16, 8, seed=3)
    _, gq = grad_of(name, e, q, g)
    assert gq is None


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same shape"):
        ESTIMATORS["rotation"](rand(3, 4), rand(3, 5))


# ---------------------------------------------------------------- backward formulas


def test_ste_passes_gradient_unchanged():
    e, q, g = rand(64, 16, seed=1), rand(64, 16, seed=2), rand(64, 16, seed=3)
    ge, _ = grad_of("ste", e, q, g)
    assert torch.equal(ge, g)


@pytest.mark.parametrize("d", [2, 3, 4, 32, 256])
def test_rotation_equals_explicit_matrix(d):
    e, q, g = rand(20, d, seed=1), rand(20, d, seed=2), rand(20, d, seed=3)
    ge, _ = grad_of("rotation", e, q, g)
    for i in range(20):
        lam = q[i].norm() / e[i].norm()
        R = rotation_matrix(e[i], q[i])
        torch.testing.assert_close(R @ e[i] * lam, q[i])  # R aligns e with q (sanity of the reference)
        torch.testing.assert_close(ge[i], lam * R.T @ g[i])


@pytest.mark.parametrize("d", [3, 32])
def test_rotation_preserves_angle_and_scales_norm(d):
    e, q, g = rand(500, d, seed=4), rand(500, d, seed=5), rand(500, d, seed=6)
    ge, _ = grad_of("rotation", e, q, g)
    torch.testing.assert_close(angle(e, ge), angle(q, g))  # A.6
    torch.testing.assert_close(ge.norm(dim=-1), q.norm(dim=-1) / e.norm(dim=-1) * g.norm(dim=-1))


def test_ste_does_not_preserve_angle():  # so the angle test above can fail
    e, q, g = rand(500, 8, seed=4), rand(500, 8, seed=5), rand(500, 8, seed=6)
    ge, _ = grad_of("ste", e, q, g)
    assert (angle(e, ge) - angle(q, g)).abs().mean() > 0.1


@pytest.mark.parametrize("name", ["rotation", "rotation_unscaled", "reflection"])
def test_reduces_to_ste_when_e_equals_q(name):
    e, g = rand(50, 16, seed=7), rand(50, 16, seed=8)
    ge, _ = grad_of(name, e, e.clone(), g)
    torch.testing.assert_close(ge, g)


def test_rotation_of_scaled_copy_is_a_pure_rescale():
    e, g = rand(50, 16, seed=7), rand(50, 16, seed=8)
    ge, _ = grad_of("rotation", e, 3.0 * e, g)  # same direction: R = I, λ = 3
    torch.testing.assert_close(ge, 3.0 * g)


def test_rotation_unscaled_equals_explicit_matrix():
    e, q, g = rand(20, 6, seed=1), rand(20, 6, seed=2), rand(20, 6, seed=3)
    ge, _ = grad_of("rotation_unscaled", e, q, g)
    for i in range(20):
        torch.testing.assert_close(ge[i], rotation_matrix(e[i], q[i]).T @ g[i])
    torch.testing.assert_close(ge.norm(dim=-1), g.norm(dim=-1))  # orthogonal: norm kept


def test_reflection_equals_explicit_matrix():
    e, q, g = rand(20, 6, seed=1), rand(20, 6, seed=2), rand(20, 6, seed=3)
    ge, _ = grad_of("reflection", e, q, g)
    for i in range(20):
        lam = q[i].norm() / e[i].norm()
        H = reflection_matrix(e[i], q[i])
        torch.testing.assert_close(lam * H @ e[i], q[i])  # the reflection maps e to q
        torch.testing.assert_close(ge[i], lam * H @ g[i])


def test_gamma_family():
    e, q, g = rand(30, 5, seed=1), rand(30, 5, seed=2), rand(30, 5, seed=3)
    base, _ = grad_of("rotation", e, q, g, gamma="one")
    torch.testing.assert_close(base, grad_of("rotation_unscaled", e, q, g)[0])
    lam = (q.norm(dim=-1) / e.norm(dim=-1))[:, None]
    torch.testing.assert_close(grad_of("rotation", e, q, g, gamma="norm_ratio")[0], lam * base)
    torch.testing.assert_close(grad_of("rotation", e, q, g)[0], lam * base)
    inv = 1.0 / (8.0 * ((q - e) ** 2).sum(-1, keepdim=True))
    torch.testing.assert_close(grad_of("rotation", e, q, g, gamma="inverse_sq_distance")[0], inv * base)
    torch.testing.assert_close(grad_of("rotation", e, q, g, gamma=0.25)[0], 0.25 * base)
    custom = lambda e_, q_: e_.norm(dim=-1, keepdim=True) ** 2  # noqa: E731
    torch.testing.assert_close(grad_of("rotation", e, q, g, gamma=custom)[0],
                               e.norm(dim=-1, keepdim=True) ** 2 * base)


def test_gamma_names_and_errors():
    assert set(GAMMAS) == {"norm_ratio", "one", "inverse_sq_distance"}
    with pytest.raises(ValueError, match="valid estimators: ste, rotation"):
        get_estimator("rotate")
    with pytest.raises(ValueError, match="only"):
        get_estimator("ste", gamma="one")
    with pytest.raises(ValueError, match="norm_ratio"):
        get_estimator("rotation", gamma="bogus")
    with pytest.raises(ValueError, match="finite"):
        get_estimator("rotation", gamma=float("inf"))


# ---------------------------------------------------------------- gradcheck


class _FrozenRotation(torch.autograd.Function):
    """q̃ = sg(γR)e with γ, R frozen at (e0, q): its true Jacobian is γR, so gradcheck compares
    rotation_vjp with finite differences of the linear map the paper defines."""

    @staticmethod
    def forward(ctx, e, e0, q, gamma):
        ctx.save_for_backward(e0, q)
        ctx.gamma = gamma
        out = []
        for i in range(e.shape[0]):
            R = rotation_matrix(e0[i], q[i])
            scale = {"norm_ratio": q[i].norm() / e0[i].norm(), "one": 1.0}.get(gamma, gamma)
            out.append(scale * R @ e[i])
        return torch.stack(out)

    @staticmethod
    def backward(ctx, g):
        e0, q = ctx.saved_tensors
        return rotation_vjp(e0, q, g, gamma=ctx.gamma), None, None, None


class _FrozenReflection(torch.autograd.Function):
    @staticmethod
    def forward(ctx, e, e0, q):
        ctx.save_for_backward(e0, q)
        return torch.stack([q[i].norm() / e0[i].norm() * reflection_matrix(e0[i], q[i]) @ e[i]
                            for i in range(e.shape[0])])

    @staticmethod
    def backward(ctx, g):
        e0, q = ctx.saved_tensors
        return reflection_vjp(e0, q, g), None, None


@pytest.mark.parametrize("gamma", ["norm_ratio", "one", 0.5])
def test_gradcheck_rotation(gamma):
    e0, q = rand(6, 5, seed=11), rand(6, 5, seed=12)
    e = e0.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: _FrozenRotation.apply(x, e0, q, gamma), (e,))


def test_gradcheck_reflection():
    e0, q = rand(6, 5, seed=11), rand(6, 5, seed=12)
    e = e0.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: _FrozenReflection.apply(x, e0, q), (e,))


# ---------------------------------------------------------------- degenerate rows


def degenerate_rows(dtype):
    """Rows: e = 0, q = 0, e = −q, e ≈ −q, tiny e, tiny q, e = q, then 3 ordinary rows."""
    d = 4
    base = rand(10, d, dtype=torch.float64, seed=21)
    e, q = base.clone(), rand(10, d, dtype=torch.float64, seed=22)
    e[0] = 0
    q[1] = 0
    q[2] = -e[2]
    q[3] = -e[3] + 1e-5 * rand(d, seed=23)
    e[4] = 1e-30
    q[5] = 1e-30
    q[6] = e[6]
    return e.to(dtype), q.to(dtype)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_degenerate_rows_give_finite_gradients(name, dtype):
    e, q = degenerate_rows(dtype)
    g = rand(*e.shape, dtype=dtype, seed=24)
    ge, _ = grad_of(name, e, q, g)
    assert torch.isfinite(ge).all(), ge


@pytest.mark.parametrize("name", ["rotation", "rotation_unscaled"])
def test_rotation_fallback_rows_get_ste_and_are_counted(name):
    e, q = degenerate_rows(torch.float32)
    g = rand(*e.shape, dtype=torch.float32, seed=24)
    ge, _ = grad_of(name, e, q, g)
    fallback = [0, 1, 2, 3]  # e = 0, q = 0, antiparallel, nearly antiparallel
    if e[4].norm() <= 1e-6:
        fallback.append(4)
    if q[5].norm() <= 1e-6:
        fallback.append(5)
    torch.testing.assert_close(ge[fallback], g[fallback], rtol=0, atol=0)
    assert int(ESTIMATORS[name].count_fallbacks(e, q)) == len(fallback)
    ok = [i for i in range(10) if i not in fallback]
    assert not torch.allclose(ge[7:], g[7:])  # ordinary rows are rotated, not copied
    assert torch.isfinite(ge[ok]).all()


def test_reflection_fallbacks():
    e, q = degenerate_rows(torch.float32)
    g = rand(*e.shape, dtype=torch.float32, seed=24)
    ge, _ = grad_of("reflection", e, q, g)
    torch.testing.assert_close(ge[6], g[6])  # e = q: no reflection needed, λ = 1
    # e = 0, q = 0, tiny e, tiny q: no direction; e = q: parallel
    assert int(ESTIMATORS["reflection"].count_fallbacks(e, q)) == 5
    assert int(ESTIMATORS["ste"].count_fallbacks(e, q)) == 0


def test_near_antiparallel_threshold():
    e = rand(1, 3, seed=30)
    q = -e.clone()
    assert int(ESTIMATORS["rotation"].count_fallbacks(e, q)) == 1
    theta = math.acos(-1 + 4 * ANGLE_EPS)  # just outside the fallback cone
    u = e[0] / e[0].norm()
    v = torch.tensor([u[1], -u[0], 0.0], dtype=u.dtype)
    v = v / v.norm()
    q2 = (math.cos(theta) * u + math.sin(theta) * v)[None]
    assert int(ESTIMATORS["rotation"].count_fallbacks(e, q2)) == 0
    g = rand(1, 3, seed=31)
    ge, _ = grad_of("rotation", e, q2, g)
    torch.testing.assert_close(angle(e, ge), angle(q2, g))


# ---------------------------------------------------------------- cost


@pytest.mark.parametrize("name", ALL)
def test_saves_nothing_beyond_e_and_q(name):
    e = rand(32, 8, dtype=torch.float32, seed=1).requires_grad_(True)
    q = rand(32, 8, dtype=torch.float32, seed=2)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        ESTIMATORS[name](e, q)
    assert len(saved) <= 2
    for t in saved:
        assert t.data_ptr() in (e.data_ptr(), q.data_ptr())


def test_compiled_kernels_match_eager():
    """The torch.compile path (used for large tensors) gives the eager kernels' gradients."""
    e, q, g = (rand(4096, 32, dtype=torch.float32, seed=s) for s in (1, 2, 3))
    e[0] = 0
    q[1] = -e[1]
    previous = get_compile()
    try:
        set_compile("never")
        eager = {n: grad_of(n, e, q, g)[0] for n in ALL}
        eager_count = ESTIMATORS["rotation"].count_fallbacks(e, q)
        set_compile("always")
        for n in ALL:
            torch.testing.assert_close(grad_of(n, e, q, g)[0], eager[n], rtol=1e-4, atol=1e-5)
        assert torch.equal(ESTIMATORS["rotation"].count_fallbacks(e, q), eager_count)
    finally:
        set_compile(previous)


def test_set_compile_rejects_unknown_mode():
    with pytest.raises(ValueError, match="auto"):
        set_compile("sometimes")


def test_eager_kernels_in_row_blocks_equal_one_block(monkeypatch):
    from rvq_cli.quantize.estimators import kernels as est_mod

    e, q, g = (rand(1000, 7, dtype=torch.float32, seed=s) for s in (1, 2, 3))
    e[3] = 0
    whole = {n: grad_of(n, e, q, g)[0] for n in ALL}
    count = ESTIMATORS["rotation"].count_fallbacks(e, q)
    monkeypatch.setattr(est_mod, "_EAGER_BLOCK", 7 * 33)  # 33 rows a block, a ragged last block
    for n in ALL:
        assert torch.equal(grad_of(n, e, q, g)[0], whole[n])
    assert torch.equal(ESTIMATORS["rotation"].count_fallbacks(e, q), count) and int(count) == 1
