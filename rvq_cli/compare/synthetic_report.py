"""``rvq compare EST... --synthetic himmelblau|voronoi|field``: the paper's 2-D problems run for
each estimator, summarised as a table (:class:`.tables.Table`, as a recipe comparison's), a JSON
file and the paper's figure (8, 4, or 2/14).

Each ``plot_*`` returns what it drew, so tests compare the picture's data with independent
computations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import RvqError, option
from ..files import write_json_atomic
from ..quantize import ESTIMATORS, PAIRWISE
from . import synthetic as syn
from .plotting import hide_ticks, new_figure, save_figure
from .tables import Table, plain_table

__all__ = ["SyntheticError", "SyntheticResult", "plot_field", "plot_himmelblau", "plot_voronoi", "run_synthetic",
           "voronoi_summary"]

HIMMELBLAU_PANELS = (0, 33, 66, 100)
FIELD_FUNCTIONS = (("x² + y²", syn.quadratic, syn.grad_quadratic),
                   ("log|x/2 + tanh y|", syn.log_tanh, syn.grad_log_tanh))


class SyntheticError(RvqError):
    """Bad arguments to a synthetic comparison; the message says what to change."""


@dataclass
class SyntheticResult:
    title: str
    columns: list[str]
    rows: list[list[str]]
    lines: list[str]
    json_path: Path
    figure: Path
    data: dict = field(repr=False, default_factory=dict)

    @property
    def tables(self) -> list[Table]:
        """What the CLI prints, in the shape of a recipe comparison's tables (``CompareResult.tables``)."""
        return [plain_table(self.title, self.columns, self.rows)]


def _json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, obj)


def _check(names: list[str], problem: str) -> None:
    if not names:
        raise SyntheticError(f"name the estimators to compare, e.g. rvq compare ste rotation --synthetic {problem}.")
    bad = [n for n in names if n not in PAIRWISE]
    if bad:
        kinds = ", ".join(f"{n} ({ESTIMATORS[n].kind})" if n in ESTIMATORS else f"{n} (unknown)" for n in bad)
        raise SyntheticError(f"{option('problem', flag='--synthetic')} {problem} compares estimators that are a "
                             f"function of e and q ({', '.join(PAIRWISE)}); not {kinds}, which need a decoder or the "
                             "whole codebook: compare those on a recipe.")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise SyntheticError(f"estimator(s) named twice: {', '.join(repeated)}; name each once.")


def run_synthetic(problem: str, names: list[str], *, out: Path, seeds: int = 10) -> SyntheticResult:
    _check(names, problem)
    out = Path(out)
    if problem == "himmelblau":
        if seeds < 2:
            raise SyntheticError(f"{option('seeds')} must be at least 2 (the spread needs two runs), got {seeds}.")
        return _himmelblau(names, out, seeds)
    if problem == "voronoi":
        return _voronoi(names, out)
    if problem == "field":
        return _field(names, out)
    raise SyntheticError(f"unknown synthetic problem {problem!r}; choose himmelblau, voronoi or field.")


# ---------------------------------------------------------------- Himmelblau (A.2, Figure 8)


def plot_himmelblau(runs: dict[str, syn.HimmelblauResult], curves: dict[str, np.ndarray], path: Path) -> dict:
    """Figure 8: per estimator (rows), points and codes at the start and after 33/66/100 updates
    over Himmelblau's contours; a last column with the mean loss over seeds per update."""
    cols = len(HIMMELBLAU_PANELS) + 1
    fig, axes = new_figure(len(runs), cols, figsize=(3.0 * cols, 3.0 * len(runs)))
    xs = np.linspace(-5.5, 5.5, 200)
    gx, gy = np.meshgrid(xs, xs)
    fz = (gx**2 + gy - 11) ** 2 + (gx + gy**2 - 7) ** 2
    drawn = {}
    for i, (name, r) in enumerate(runs.items()):
        for j, step in enumerate(HIMMELBLAU_PANELS):
            ax = axes[i][j]
            pts, codes = (r.init_points, r.init_codes) if step == 0 else (r.snapshots[step].points,
                                                                          r.snapshots[step].codes)
            drawn[(name, step)] = (pts, codes)
            ax.contour(gx, gy, np.log1p(fz), levels=12, linewidths=0.5, colors="0.75")
            ax.scatter(pts[:, 0], pts[:, 1], s=3, color="tab:blue")
            ax.scatter(codes[:, 0], codes[:, 1], s=40, marker="x", color="tab:red")
            ax.set_xlim(-5.5, 5.5)
            ax.set_ylim(-5.5, 5.5)
            hide_ticks(ax)
            ax.set_title(f"{name}: {'start' if step == 0 else f'{step} updates'}", fontsize=9)
        ax = axes[i][-1]
        for other, curve in curves.items():
            ax.plot(curve, label=other, linewidth=2.0 if other == name else 1.0, alpha=1.0 if other == name else 0.5)
        ax.set_yscale("log")
        ax.set_title("mean loss over seeds", fontsize=9)
        ax.set_xlabel("update")
        ax.legend(fontsize=7)
    save_figure(fig, path)
    return drawn


def _himmelblau(names: list[str], out: Path, seeds: int) -> SyntheticResult:
    results = {n: [syn.himmelblau(n, seed=s) for s in range(seeds)] for n in names}
    summary = syn.seeds_summary([r for rs in results.values() for r in rs])
    curves = {n: np.mean([r.loss for r in rs], axis=0) for n, rs in results.items()}
    base = names[0]
    rows, per = [], {}
    for n in names:
        s = summary[n]
        wins = sum(a.final_loss < b.final_loss for a, b in zip(results[n], results[base])) if n != base else None
        per[n] = {"loss_mean": s.loss_mean, "loss_std": s.loss_std, "distortion_mean": s.distortion_mean,
                  "distortion_std": s.distortion_std, "final_loss": [r.final_loss for r in results[n]],
                  "final_distortion": [r.final_distortion for r in results[n]],
                  "mean_loss_curve": curves[n].tolist(), "lower_loss_than_first": wins}
        rows.append([n, f"{s.loss_mean:.3f} ± {s.loss_std:.3f}", f"{s.distortion_mean:.4f} ± {s.distortion_std:.4f}",
                     f"{curves[n][33]:.2f}", f"{curves[n][66]:.2f}", "—" if wins is None else f"{wins}/{seeds}"])
    figure = out / "himmelblau.png"
    plot_himmelblau({n: rs[0] for n, rs in results.items()}, curves, figure)
    setup = ("500 points and 16 codes uniform in [-5, 5]², sum of f over the quantized points, SGD lr 1e-3, "
             "EMA decay 0.8, 100 updates, the same start per seed for every estimator")
    data = {"problem": "himmelblau", "setup": setup, "seeds": list(range(seeds)), "estimators": per}
    _json(out / "himmelblau.json", data)
    lines = [f"setup: {setup}; mean ± sample std over seeds 0..{seeds - 1}. Figure: seed 0."]
    return SyntheticResult(f"Himmelblau (A.2): final loss and distortion over {seeds} seeds",
                           ["estimator", "final loss", "distortion ‖e − q‖²", "loss @33", "loss @66",
                            f"lower loss than {base}"], rows, lines, out / "himmelblau.json", figure, data)


# ---------------------------------------------------------------- Voronoi (§4.3, Figure 4)


def voronoi_summary(r: syn.VoronoiResult) -> list[dict]:
    """Per region: how rigidly the points moved (the largest distance of a point's displacement
    from the region's mean displacement: 0 for a translation),
    the mean change of distance to the code (> 0 pushed out, < 0 pulled in), and the change of
    the mean pairwise distance within the region (the cluster spreads or tightens)."""
    start, end = r.points[0], r.points[-1]
    rows = []
    for k in range(len(r.codes)):
        m = r.region == k
        disp = end[m] - start[m]
        d0 = np.linalg.norm(start[m] - r.codes[k], axis=-1)
        d1 = np.linalg.norm(end[m] - r.codes[k], axis=-1)

        def spread(p):
            diff = p[:, None, :] - p[None, :, :]
            return float(np.linalg.norm(diff, axis=-1).sum() / (len(p) * (len(p) - 1)))

        axis = r.codes[k] / np.linalg.norm(r.codes[k])  # along q, and across it
        across = np.array([-axis[1], axis[0]])
        rows.append({"region": k, "code": r.codes[k].tolist(), "points": int(m.sum()),
                     "displacement_spread": float(np.linalg.norm(disp - disp.mean(0), axis=-1).max()),
                     "mean_displacement": disp.mean(0).tolist(),
                     "distance_to_code_change": float((d1 - d0).mean()),
                     "spread_change": spread(end[m]) - spread(start[m]),
                     "spread_across_change": float((end[m] @ across).std() - (start[m] @ across).std()),
                     "spread_along_change": float((end[m] @ axis).std() - (start[m] @ axis).std())})
    return rows


def plot_voronoi(runs: dict[str, syn.VoronoiResult], path: Path) -> dict:
    """Figure 4: per estimator, the Voronoi regions of the fixed codes, the points at the start
    (light) and after the updates (dark), each joined by its path."""
    fig, axes = new_figure(1, len(runs), figsize=(4.2 * len(runs), 4.2))
    xs = np.linspace(-7, 7, 300)
    gx, gy = np.meshgrid(xs, xs)
    drawn = {}
    for ax, (name, r) in zip(axes[0], runs.items()):
        grid = np.stack([gx, gy], -1)
        region = np.argmin(((grid[..., None, :] - r.codes) ** 2).sum(-1), -1)
        ax.contourf(gx, gy, region, levels=np.arange(len(r.codes) + 1) - 0.5, cmap="Pastel1", alpha=0.6)
        for i in range(r.points.shape[1]):
            ax.plot(r.points[:, i, 0], r.points[:, i, 1], color="0.5", linewidth=0.5)
        ax.scatter(r.points[0, :, 0], r.points[0, :, 1], s=6, color="tab:blue", alpha=0.35, label="start")
        ax.scatter(r.points[-1, :, 0], r.points[-1, :, 1], s=6, color="tab:blue", label=f"after {len(r.grads)}")
        ax.scatter(r.codes[:, 0], r.codes[:, 1], s=60, marker="x", color="tab:red", label="codes")
        for _, (c, g) in enumerate(zip(r.codes, r.region_grads)):
            ax.annotate("", xy=tuple(c - 1.2 * g), xytext=tuple(c), arrowprops=dict(arrowstyle="->", color="tab:red"))
        ax.set_title(f"{name}", fontsize=10)
        ax.set_aspect("equal")
        ax.set_xlim(-6, 6)
        ax.set_ylim(-6.5, 5.5)
        drawn[name] = (r.points[0], r.points[-1])
    axes[0][0].legend(fontsize=7, loc="lower left")
    save_figure(fig, path)
    return drawn


def _voronoi(names: list[str], out: Path) -> SyntheticResult:
    runs = {n: syn.voronoi(n, seed=0) for n in names}
    summary = {n: voronoi_summary(r) for n, r in runs.items()}
    labels = {0: "top-right (push)", 1: "top-left (along)", 2: "bottom (pull)"}
    rows = [[n, labels.get(s["region"], str(s["region"])), f"{s['displacement_spread']:.2e}",
             f"{s['distance_to_code_change']:+.3f}", f"{s['spread_change']:+.3f}", f"{s['spread_across_change']:+.3f}",
             f"{s['spread_along_change']:+.3f}"]
            for n, regions in summary.items() for s in regions]
    figure = out / "voronoi.png"
    plot_voronoi(runs, figure)
    r0 = next(iter(runs.values()))
    setup = (f"3 fixed codes {syn.VORONOI_CODES}, 4 Gaussian clusters in two regions and a crescent in the third "
             f"(seed 0), one fixed gradient per region, {len(r0.grads)} updates of lr {r0.lr}")
    data = {"problem": "voronoi", "setup": setup, "estimators": summary}
    _json(out / "voronoi.json", data)
    lines = [f"setup: {setup}.", "displacement spread 0: the region moved rigidly (a translation); Δ distance < 0: "
             "points pulled toward their code; Δ spread < 0: the cluster tightened (mean pairwise distance); "
             "across/along q: the standard deviation of the points' positions perpendicular to and along the "
             "code's direction."]
    return SyntheticResult("Voronoi regions (§4.3): how each estimator moves the points of a region",
                           ["estimator", "region", "displacement spread", "Δ distance to code", "Δ spread",
                            "Δ std across q", "Δ std along q"],
                           rows, lines, out / "voronoi.json", figure, data)


# ---------------------------------------------------------------- gradient fields (Figures 2, 14)


def _capped(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Arrows with their norms clipped to [lo, hi], directions kept (the paper caps norms too)."""
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v * (np.clip(n, lo, hi) / np.maximum(n, 1e-300))


def plot_field(fields: dict[str, dict[str, syn.FieldResult]], path: Path,
               cap: tuple[float, float] = (0.5, 3.0)) -> dict:
    """Figure 2 / 14: for each function (rows), the field without quantization, then the field
    each estimator induces (columns); arrow norms capped to ``cap``. Returns the drawn arrows."""
    names = list(next(iter(fields.values())))
    cols = len(names) + 1
    fig, axes = new_figure(len(fields), cols, figsize=(3.6 * cols, 3.6 * len(fields)))
    drawn = {}
    for i, (fname, per) in enumerate(fields.items()):
        first = per[names[0]]
        panels = [("no quantization", first.exact)] + [(n, per[n].grad_e) for n in names]
        for j, (label, vec) in enumerate(panels):
            ax = axes[i][j]
            arrows = -_capped(vec, *cap)  # descent directions, as the updates move e
            ax.quiver(first.grid[:, 0], first.grid[:, 1], arrows[:, 0], arrows[:, 1], angles="xy", scale_units="xy",
                      scale=6.0, width=0.004, color="tab:blue")
            ax.scatter(first.codes[:, 0], first.codes[:, 1], s=30, marker="x", color="tab:red")
            ax.set_title(f"{label}: f = {fname}", fontsize=9)
            ax.set_aspect("equal")
            hide_ticks(ax)
            drawn[(fname, label)] = arrows
    save_figure(fig, path)
    return drawn


def _angle(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    cos = (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-300)
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def _field(names: list[str], out: Path) -> SyntheticResult:
    fields = {fname: {n: syn.gradient_field(n, f) for n in names} for fname, f, _ in FIELD_FUNCTIONS}
    rows, data = [], {}
    for fname, _, grad in FIELD_FUNCTIONS:
        data[fname] = {}
        for n in names:
            r = fields[fname][n]
            closed = grad(torch.as_tensor(r.grid)).numpy()
            off_true = float(np.median(_angle(r.grad_e, closed)))
            transport = float(np.abs(_angle(r.grid, r.grad_e) - _angle(r.codes[r.index], r.grad_q)).mean())
            data[fname][n] = {"median_angle_to_true_gradient_deg": off_true, "mean_angle_mismatch_deg": transport,
                              "max_error_exact_vs_closed_form": float(np.abs(r.exact - closed).max())}
            rows.append([n, fname, f"{off_true:.1f}", f"{transport:.2e}"])
    figure = out / "field.png"
    plot_field(fields, figure)
    _json(out / "field.json", {"problem": "field", "codes": "16 on the lattice {-3, -1, 1, 3}²",
                                     "grid": "24 × 24 points in [-4, 4]²", "estimators": data})
    lines = ["angle to ∇f(e): how far the induced field is from the field without quantization (median over the "
             "grid); |∠(e, grad_e) − ∠(q, ∇f(q))|: 0 when the estimator preserves angles (the rotation family).",
             "Arrows point along −gradient (the update), norms capped to [0.5, 3] for legibility."]
    return SyntheticResult("Gradient fields (Figures 2 and 14), 16 codes",
                           ["estimator", "f", "angle to ∇f(e) °", "|∠(e,∇e) − ∠(q,g)| °"], rows, lines,
                           out / "field.json", figure, data)
