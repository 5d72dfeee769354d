"""rvq compare --synthetic: run_synthetic and the figures' data (plot_field, plot_voronoi,
plot_himmelblau, voronoi_summary) against independent numpy computations."""

import json

import numpy as np
import pytest
import torch

from rvq_cli.compare.synthetic import (
    VORONOI_CODES,
    grad_log_tanh,
    grad_quadratic,
    gradient_field,
    himmelblau,
    log_tanh,
    quadratic,
    voronoi,
)
from rvq_cli.compare.synthetic_report import (
    SyntheticError,
    plot_field,
    plot_himmelblau,
    plot_voronoi,
    run_synthetic,
    voronoi_summary,
)

# the two functions of Figure 2 as plot_field labels them, with their closed-form gradients
FUNCTIONS = {"x² + y²": (quadratic, grad_quadratic), "log|x/2 + tanh y|": (log_tanh, grad_log_tanh)}
CAP = (0.5, 3.0)


def _cap(v: np.ndarray, lo: float = CAP[0], hi: float = CAP[1]) -> np.ndarray:
    """Each row's norm clipped to [lo, hi], direction kept (written out row by row)."""
    out = np.empty_like(v)
    for i, row in enumerate(v):
        n = float(np.hypot(row[0], row[1]))
        out[i] = row if n == 0 else row / n * min(max(n, lo), hi)
    return out


def _angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Unsigned angle between 2-D rows in degrees, via atan2 (accurate near 0 and 180°)."""
    cross = a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]
    return np.degrees(np.arctan2(np.abs(cross), (a * b).sum(-1)))


def _grid_and_codes():
    """24 × 24 points in [-4, 4]² (x outer, y inner) and the 16 codes {-3, -1, 1, 3}²."""
    ax = np.linspace(-4.0, 4.0, 24)
    gx, gy = np.meshgrid(ax, ax, indexing="ij")
    grid = np.stack([gx.ravel(), gy.ravel()], -1)
    lattice = np.array([-3.0, -1.0, 1.0, 3.0])
    cx, cy = np.meshgrid(lattice, lattice, indexing="ij")
    return grid, np.stack([cx.ravel(), cy.ravel()], -1)


def _nearest(points: np.ndarray, codes: np.ndarray) -> np.ndarray:
    return np.argmin(((points[:, None, :] - codes[None, :, :]) ** 2).sum(-1), axis=1)


# --------------------------------------------------------------------------------------------
# gradient fields (Figures 2, 14)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def field_drawing(tmp_path_factory):
    names = ["ste", "rotation"]
    fields = {label: {n: gradient_field(n, f) for n in names} for label, (f, _) in FUNCTIONS.items()}
    path = tmp_path_factory.mktemp("field") / "field.png"
    drawn = plot_field(fields, path)
    return fields, drawn, path


def test_field_figure_is_written_with_one_panel_per_function_and_estimator(field_drawing):
    _, drawn, path = field_drawing
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(drawn) == {(f, p) for f in FUNCTIONS for p in ("no quantization", "ste", "rotation")}
    assert all(a.shape == (24 * 24, 2) for a in drawn.values())


@pytest.mark.parametrize("fname", list(FUNCTIONS))
def test_field_without_quantization_is_the_capped_descent_direction(field_drawing, fname):
    fields, drawn, _ = field_drawing
    grid, _ = _grid_and_codes()
    np.testing.assert_allclose(fields[fname]["ste"].grid, grid, rtol=0, atol=1e-12)
    grad = FUNCTIONS[fname][1](torch.from_numpy(grid)).numpy()
    want = -_cap(grad)
    np.testing.assert_allclose(drawn[(fname, "no quantization")], want, rtol=1e-10, atol=1e-12)
    norms = np.linalg.norm(drawn[(fname, "no quantization")], axis=-1)
    assert norms.min() >= CAP[0] - 1e-12 and norms.max() <= CAP[1] + 1e-12


@pytest.mark.parametrize("fname", list(FUNCTIONS))
def test_field_ste_arrows_are_the_capped_gradient_at_the_nearest_code(field_drawing, fname):
    _, drawn, _ = field_drawing
    grid, codes = _grid_and_codes()
    q = codes[_nearest(grid, codes)]
    want = -_cap(FUNCTIONS[fname][1](torch.from_numpy(q)).numpy())
    np.testing.assert_allclose(drawn[(fname, "ste")], want, rtol=1e-10, atol=1e-12)
    # and it is not the field without quantization (the STE copies ∇f(q), not ∇f(e))
    assert np.abs(drawn[(fname, "ste")] - drawn[(fname, "no quantization")]).max() > 0.1


@pytest.mark.parametrize("fname", list(FUNCTIONS))
def test_field_rotation_arrows_keep_the_angle_between_q_and_its_gradient(field_drawing, fname):
    _, drawn, _ = field_drawing
    grid, codes = _grid_and_codes()
    q = codes[_nearest(grid, codes)]
    g = FUNCTIONS[fname][1](torch.from_numpy(q)).numpy()
    grad_e = -drawn[(fname, "rotation")]  # the arrows are −capped(grad_e)
    ok = (np.linalg.norm(grad_e, axis=-1) > 0) & (np.linalg.norm(g, axis=-1) > 0) & \
        (np.linalg.norm(grid, axis=-1) > 0)
    assert ok.sum() > 500
    np.testing.assert_allclose(_angle_deg(grid[ok], grad_e[ok]), _angle_deg(q[ok], g[ok]), rtol=0, atol=1e-6)
    # the STE arrows do not keep that angle
    ste = -drawn[(fname, "ste")]
    assert np.abs(_angle_deg(grid[ok], ste[ok]) - _angle_deg(q[ok], g[ok])).max() > 1.0


def test_run_synthetic_field_writes_json_matching_the_fields(tmp_path):
    res = run_synthetic("field", ["ste", "rotation"], out=tmp_path)
    assert res.figure == tmp_path / "field.png" and res.figure.stat().st_size > 1000
    data = json.loads((tmp_path / "field.json").read_text())
    assert data["problem"] == "field"
    grid, codes = _grid_and_codes()
    q = codes[_nearest(grid, codes)]
    for fname, (_, grad) in FUNCTIONS.items():
        per = data["estimators"][fname]
        assert set(per) == {"ste", "rotation"}
        exact = grad(torch.from_numpy(grid)).numpy()
        gq = grad(torch.from_numpy(q)).numpy()
        # the STE sends ∇f(q): its median angle to ∇f(e), computed here
        assert per["ste"]["median_angle_to_true_gradient_deg"] == pytest.approx(
            float(np.median(_angle_deg(gq, exact))), abs=1e-6)
        assert per["rotation"]["mean_angle_mismatch_deg"] < 1e-6
        assert per["ste"]["mean_angle_mismatch_deg"] > 1.0
        for n in ("ste", "rotation"):
            assert per[n]["max_error_exact_vs_closed_form"] < 1e-9
    assert [r[:2] for r in res.rows] == [[n, f] for f in FUNCTIONS for n in ("ste", "rotation")]


# --------------------------------------------------------------------------------------------
# Voronoi (§4.3, Figure 4)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def voronoi_runs():
    return {n: voronoi(n, seed=0) for n in ("ste", "rotation")}


def test_voronoi_ste_moves_each_region_rigidly(voronoi_runs):
    rows = voronoi_summary(voronoi_runs["ste"])
    assert [r["region"] for r in rows] == [0, 1, 2]
    for r in rows:
        assert r["points"] > 10
        assert r["displacement_spread"] < 1e-9
        assert abs(r["spread_change"]) < 1e-9
        assert abs(r["spread_across_change"]) < 1e-9 and abs(r["spread_along_change"]) < 1e-9


def test_voronoi_rotation_does_not_move_regions_rigidly(voronoi_runs):
    for r in voronoi_summary(voronoi_runs["rotation"]):
        assert r["displacement_spread"] > 1e-3


@pytest.mark.parametrize("name", ["ste", "rotation"])
def test_voronoi_summary_numbers_match_numpy(voronoi_runs, name):
    r = voronoi_runs[name]
    start, end = r.points[0], r.points[-1]
    rows = voronoi_summary(r)
    assert len(rows) == len(VORONOI_CODES)
    for row in rows:
        k = row["region"]
        m = r.region == k
        code = np.asarray(VORONOI_CODES[k])
        assert row["code"] == list(code) and row["points"] == int(m.sum())
        # rotate the plane so the code lies on the x axis: x' is along q, y' across it
        theta = np.arctan2(code[1], code[0])
        rot = np.array([[np.cos(theta), np.sin(theta)], [-np.sin(theta), np.cos(theta)]])
        s0, s1 = start[m] @ rot.T, end[m] @ rot.T
        assert row["spread_along_change"] == pytest.approx(s1[:, 0].std() - s0[:, 0].std(), abs=1e-12)
        assert row["spread_across_change"] == pytest.approx(s1[:, 1].std() - s0[:, 1].std(), abs=1e-12)
        disp = end[m] - start[m]
        np.testing.assert_allclose(row["mean_displacement"], disp.mean(0), rtol=0, atol=1e-12)
        assert row["distance_to_code_change"] == pytest.approx(
            np.mean(np.hypot(*(end[m] - code).T) - np.hypot(*(start[m] - code).T)), abs=1e-12)

        def spread(p):
            n = len(p)
            return sum(np.hypot(*(p[i] - p[j])) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))

        assert row["spread_change"] == pytest.approx(spread(end[m]) - spread(start[m]), abs=1e-10)


def test_plot_voronoi_draws_start_and_end_points(voronoi_runs, tmp_path):
    path = tmp_path / "v.png"
    drawn = plot_voronoi(voronoi_runs, path)
    assert path.is_file() and path.stat().st_size > 1000
    for n, r in voronoi_runs.items():
        np.testing.assert_array_equal(drawn[n][0], r.points[0])
        np.testing.assert_array_equal(drawn[n][1], r.points[-1])
    assert not np.allclose(drawn["ste"][1], drawn["rotation"][1])


def test_run_synthetic_voronoi_writes_the_summary(tmp_path, voronoi_runs):
    res = run_synthetic("voronoi", ["ste", "rotation"], out=tmp_path)
    data = json.loads((tmp_path / "voronoi.json").read_text())
    assert res.figure == tmp_path / "voronoi.png" and res.figure.stat().st_size > 1000
    for n, r in voronoi_runs.items():
        want = voronoi_summary(r)
        got = data["estimators"][n]
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.keys() == w.keys()
            for key in w:
                assert g[key] == pytest.approx(w[key], abs=1e-12), (n, key)
    assert len(res.rows) == 6 and {row[0] for row in res.rows} == {"ste", "rotation"}


# --------------------------------------------------------------------------------------------
# Himmelblau (A.2, Figure 8)
# --------------------------------------------------------------------------------------------


def test_run_synthetic_himmelblau_summary_is_mean_and_sample_std_over_seeds(tmp_path):
    names = ["ste", "rotation"]
    res = run_synthetic("himmelblau", names, out=tmp_path, seeds=3)
    data = json.loads((tmp_path / "himmelblau.json").read_text())
    assert res.json_path == tmp_path / "himmelblau.json"
    assert res.figure == tmp_path / "himmelblau.png" and res.figure.stat().st_size > 1000
    assert data["seeds"] == [0, 1, 2]
    finals = {}
    for n in names:
        runs = [himmelblau(n, seed=s) for s in range(3)]
        loss = np.array([r.loss[-1] for r in runs])
        dist = np.array([r.distortion[-1] for r in runs])
        finals[n] = loss
        per = data["estimators"][n]
        assert per["final_loss"] == pytest.approx(list(loss), rel=1e-12)
        assert per["loss_mean"] == pytest.approx(loss.sum() / 3, rel=1e-12)
        assert per["loss_std"] == pytest.approx(np.sqrt(((loss - loss.mean()) ** 2).sum() / 2), rel=1e-10)
        assert per["distortion_mean"] == pytest.approx(dist.mean(), rel=1e-12)
        assert per["distortion_std"] == pytest.approx(dist.std(ddof=1), rel=1e-10)
        np.testing.assert_allclose(per["mean_loss_curve"], np.mean([r.loss for r in runs], axis=0), rtol=1e-12)
        assert per["loss_std"] > 0  # three different starts
    assert data["estimators"]["ste"]["lower_loss_than_first"] is None
    wins = int(sum(a < b for a, b in zip(finals["rotation"], finals["ste"])))
    assert data["estimators"]["rotation"]["lower_loss_than_first"] == wins
    assert res.rows[1][0] == "rotation" and res.rows[1][-1] == f"{wins}/3"
    assert res.rows[0][-1] == "—"


def test_plot_himmelblau_draws_the_start_and_the_snapshots(tmp_path):
    runs = {n: himmelblau(n, seed=0) for n in ("ste", "rotation")}
    curves = {n: r.loss for n, r in runs.items()}
    path = tmp_path / "h.png"
    drawn = plot_himmelblau(runs, curves, path)
    assert path.is_file() and path.stat().st_size > 1000
    assert set(drawn) == {(n, s) for n in runs for s in (0, 33, 66, 100)}
    for n, r in runs.items():
        np.testing.assert_array_equal(drawn[(n, 0)][0], r.init_points)
        np.testing.assert_array_equal(drawn[(n, 0)][1], r.init_codes)
        for s in (33, 66, 100):
            np.testing.assert_array_equal(drawn[(n, s)][0], r.snapshots[s].points)
            np.testing.assert_array_equal(drawn[(n, s)][1], r.snapshots[s].codes)
    assert not np.array_equal(drawn[("ste", 100)][0], drawn[("rotation", 100)][0])


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("problem, names, seeds, fragment", [
    ("field", ["ste", "hessian"], 10, "hessian (loss-level)"),
    ("voronoi", ["gumbel"], 10, "gumbel (stochastic)"),
    ("field", ["ste", "nope"], 10, "nope (unknown)"),
    ("voronoi", ["rotation", "ste", "rotation"], 10, "named twice: rotation"),
    ("himmelblau", [], 10, "name the estimators"),
    ("himmelblau", ["ste", "rotation"], 1, "seeds must be at least 2"),  # called from Python: the parameter
    ("spiral", ["ste"], 10, "unknown synthetic problem 'spiral'"),
])
def test_run_synthetic_rejects_bad_arguments(tmp_path, problem, names, seeds, fragment):
    out = tmp_path / "out"
    with pytest.raises(SyntheticError) as info:
        run_synthetic(problem, names, out=out, seeds=seeds)
    assert fragment in str(info.value)
    assert not out.exists()  # nothing written
