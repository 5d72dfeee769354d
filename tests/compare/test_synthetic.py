"""The synthetic problems (A.2, §4.3 / A.10.5, Figure 2) against independent closed-form computations."""

import numpy as np
import pytest
import torch

from rvq_cli.compare import (
    grad_himmelblau,
    grad_log_tanh,
    grad_quadratic,
    gradient_field,
    himmelblau,
    himmelblau_f,
    log_tanh,
    quadratic,
    seeds_summary,
    voronoi,
)


def _angle(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Unsigned angle between 2-D rows, via atan2 (accurate near 0 and π): (..., 2) -> (...)."""
    cross = a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]
    return np.arctan2(np.abs(cross), (a * b).sum(-1))


def _nearest_np(e: np.ndarray, codes: np.ndarray) -> np.ndarray:
    return np.array([np.argmin([np.hypot(*(x - c)) for c in codes]) for x in e])


# --------------------------------------------------------------------------------------------
# Voronoi (§4.3, A.10.5)
# --------------------------------------------------------------------------------------------


def test_voronoi_ste_moves_every_point_of_a_region_by_the_same_vector():
    r = voronoi("ste", seed=0)
    step = np.diff(r.points, axis=0)  # (steps, N, 2)
    assert step.shape[0] == 25
    for k in range(len(r.codes)):
        members = r.region == k
        assert members.sum() > 10
        np.testing.assert_allclose(step[:, members], np.broadcast_to(-r.lr * r.region_grads[k], step[:, members].shape),
                                   rtol=0, atol=1e-12)


def test_voronoi_regions_are_the_nearest_codes_at_the_start():
    r = voronoi("rotation", seed=3)
    np.testing.assert_array_equal(r.region, _nearest_np(r.points[0], r.codes))


def test_voronoi_rotation_preserves_the_angle_and_scales_by_norm_ratio():
    r = voronoi("rotation", seed=0)
    q, g = r.codes[r.region], r.region_grads[r.region]  # (N, 2)
    want_angle = _angle(q, g)  # angle(q, g_k) for each point's region (A.6)
    assert np.linalg.norm(r.points, axis=-1).min() > 1.0  # no point near the origin: no STE fallback
    for t in range(r.grads.shape[0]):
        e, grad = r.points[t], r.grads[t]
        np.testing.assert_allclose(_angle(e, grad), want_angle, rtol=0, atol=1e-5)
        want_norm = np.linalg.norm(q, axis=-1) / np.linalg.norm(e, axis=-1) * np.linalg.norm(g, axis=-1)
        np.testing.assert_allclose(np.linalg.norm(grad, axis=-1), want_norm, rtol=1e-10)
        np.testing.assert_allclose(r.points[t + 1], e - r.lr * grad, rtol=0, atol=1e-12)  # update is −lr·grad_e
    # and the rotation trick really does move points of one region differently (unlike the STE)
    step = np.diff(r.points, axis=0)[0]
    assert np.ptp(step[r.region == 0], axis=0).max() > 1e-2


# --------------------------------------------------------------------------------------------
# Gradient fields (Figure 2, Figure 14)
# --------------------------------------------------------------------------------------------

FIELDS = [(quadratic, grad_quadratic), (log_tanh, grad_log_tanh)]


@pytest.mark.parametrize("f, grad_f", FIELDS, ids=["quadratic", "log_tanh"])
def test_field_ste_copies_the_gradient_at_q(f, grad_f):
    r = gradient_field("ste", f)
    assert r.grid.shape == (24 * 24, 2) and r.codes.shape == (16, 2)
    np.testing.assert_array_equal(r.index, _nearest_np(r.grid, r.codes))
    q = torch.from_numpy(r.codes[r.index])
    np.testing.assert_array_equal(r.grad_e, r.grad_q)  # the STE copies bit for bit
    np.testing.assert_allclose(r.grad_e, grad_f(q).numpy(), rtol=1e-12, atol=0)  # = ∇f(q), closed form
    np.testing.assert_allclose(r.exact, grad_f(torch.from_numpy(r.grid)).numpy(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("f, grad_f", FIELDS, ids=["quadratic", "log_tanh"])
def test_field_rotation_preserves_angle_and_scales_norm(f, grad_f):
    r = gradient_field("rotation", f)
    e, q = r.grid, r.codes[r.index]
    g = grad_f(torch.from_numpy(q)).numpy()  # closed-form ∇f(q)
    want_norm = np.linalg.norm(q, axis=-1) / np.linalg.norm(e, axis=-1) * np.linalg.norm(g, axis=-1)
    np.testing.assert_allclose(np.linalg.norm(r.grad_e, axis=-1), want_norm, rtol=1e-10)
    np.testing.assert_allclose(_angle(e, r.grad_e), _angle(q, g), rtol=0, atol=1e-8)


def test_field_rotation_unscaled_keeps_the_norm():
    r = gradient_field("rotation_unscaled", quadratic, grid=10)
    g = grad_quadratic(torch.from_numpy(r.codes[r.index])).numpy()
    np.testing.assert_allclose(np.linalg.norm(r.grad_e, axis=-1), np.linalg.norm(g, axis=-1), rtol=1e-10)


def test_field_codes_must_be_a_square_lattice():
    with pytest.raises(ValueError, match="perfect square"):
        gradient_field("ste", quadratic, codes=15)


# --------------------------------------------------------------------------------------------
# Himmelblau (A.2)
# --------------------------------------------------------------------------------------------


def test_closed_form_himmelblau_gradient_matches_autograd():
    xy = torch.randn(50, 2, dtype=torch.float64, requires_grad=True)
    (auto,) = torch.autograd.grad(himmelblau_f(xy).sum(), xy)
    torch.testing.assert_close(grad_himmelblau(xy.detach()), auto, rtol=1e-12, atol=1e-12)
    assert float(himmelblau_f(torch.tensor([3.0, 2.0]))) == 0.0  # a minimum (Figure 7)


def test_himmelblau_same_start_for_every_estimator_and_deterministic():
    runs = {name: himmelblau(name, seed=7, steps=5, snapshot_steps=(5,))
            for name in ("ste", "rotation", "rotation_unscaled", "reflection")}
    base = runs["ste"]
    for r in runs.values():
        np.testing.assert_array_equal(r.init_points, base.init_points)
        np.testing.assert_array_equal(r.init_codes, base.init_codes)
        assert r.loss[0] == base.loss[0] and r.distortion[0] == base.distortion[0]
    again = himmelblau("rotation", seed=7, steps=5, snapshot_steps=(5,))
    np.testing.assert_array_equal(again.loss, runs["rotation"].loss)
    np.testing.assert_array_equal(again.snapshots[5].points, runs["rotation"].snapshots[5].points)
    assert not np.array_equal(himmelblau("ste", seed=8, steps=0).init_points, base.init_points)


def test_himmelblau_first_update_by_hand():
    """One STE update computed independently: SGD on the points with ∇f(q), EMA on the codes."""
    lr, decay = 1e-3, 0.8
    r = himmelblau("ste", seed=1, steps=1, snapshot_steps=(1,), lr=lr, decay=decay)
    e0, c0 = r.init_points, r.init_codes
    idx = _nearest_np(e0, c0)
    q0 = c0[idx]
    assert r.loss[0] == pytest.approx(himmelblau_f(torch.from_numpy(q0)).mean().item(), rel=1e-12)
    assert r.distortion[0] == pytest.approx(((e0 - q0) ** 2).sum(-1).mean(), rel=1e-12)
    e1 = e0 - lr * grad_himmelblau(torch.from_numpy(q0)).numpy()
    np.testing.assert_allclose(r.snapshots[1].points, e1, rtol=1e-12, atol=1e-12)
    counts = np.bincount(idx, minlength=len(c0)).astype(float)
    sums = np.stack([e0[idx == k].sum(0) for k in range(len(c0))])
    size = decay * 1.0 + (1 - decay) * counts  # EMA state starts at size 1, total = code
    c1 = (decay * c0 + (1 - decay) * sums) / size[:, None]
    np.testing.assert_allclose(r.snapshots[1].codes, c1, rtol=1e-12, atol=1e-12)
    q1 = c1[_nearest_np(e1, c1)]
    assert r.distortion[1] == pytest.approx(((e1 - q1) ** 2).sum(-1).mean(), rel=1e-10)


def test_himmelblau_default_run_shape_and_finite():
    r = himmelblau("rotation", seed=0)
    assert r.loss.shape == r.distortion.shape == (101,)
    assert sorted(r.snapshots) == [33, 66, 100]
    assert r.snapshots[100].points.shape == (500, 2) and r.snapshots[100].codes.shape == (16, 2)
    assert np.isfinite(r.loss).all() and np.isfinite(r.distortion).all()
    assert np.isfinite(himmelblau("ste", seed=0, optimizer="adam", steps=10).loss).all()


def test_himmelblau_rejects_unknown_optimizer():
    with pytest.raises(ValueError, match="optimizer"):
        himmelblau("ste", seed=0, optimizer="lbfgs")


def test_himmelblau_ten_seed_summary():
    seeds = range(10)
    runs = [himmelblau(name, seed=s) for name in ("ste", "rotation") for s in seeds]
    summary = seeds_summary(runs)
    assert set(summary) == {"ste", "rotation"}
    for name, s in summary.items():
        finals = np.array([[r.final_loss, r.final_distortion] for r in runs if r.estimator == name])
        assert s.seeds == tuple(seeds)
        assert s.loss_mean == pytest.approx(finals[:, 0].mean())
        assert s.loss_std == pytest.approx(finals[:, 0].std(ddof=1))
        assert s.distortion_mean == pytest.approx(finals[:, 1].mean())
        assert s.distortion_std == pytest.approx(finals[:, 1].std(ddof=1))
        assert all(np.isfinite([s.loss_mean, s.loss_std, s.distortion_mean, s.distortion_std]))
        assert "over 10 seeds" in str(s)
    with pytest.raises(ValueError, match="distinct seeds"):
        seeds_summary(runs[:1])


def test_diveq_applies_to_the_synthetic_problems_and_is_seeded():
    """diveq is a function of (e, q) and its noise: the noise is drawn from the run's seed, so a run
    repeats exactly, and torch's global generator is left as it was."""
    from rvq_cli.compare.synthetic import himmelblau, voronoi

    state = torch.get_rng_state()
    a, b = himmelblau("diveq", seed=3, steps=20), himmelblau("diveq", seed=3, steps=20)
    assert torch.equal(torch.get_rng_state(), state)
    np.testing.assert_array_equal(a.loss, b.loss)
    assert not np.array_equal(a.loss, himmelblau("ste", seed=3, steps=20).loss)
    assert a.loss[-1] < a.loss[0]  # it descends the function through the simulated distortion
    v = voronoi("diveq", seed=1, steps=5)
    np.testing.assert_array_equal(v.points, voronoi("diveq", seed=1, steps=5).points)
