"""rvq compare on the tiny recipe: the report against the run directories, the statistics over
seeds against an independent computation, identical initial weights, reuse / resume / restart /
extend of an output folder, locks, errors, and the CLI.

One comparison (ste, rotation; seeds 0 and 1; 2 steps) is trained once per module into a folder
addressed by a relative path (``cmp``), so every run's recorded output.dir is relative: tests that
change a comparison copy that folder into their own tmp_path and run from there."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("RVQ_COMPILE", "never")

import numpy as np
import pytest
import scipy.stats
import torch
from safetensors.torch import load_file

from rvq_cli.compare.results import COLUMNS, TRAIN_WINDOW
from rvq_cli.compare.runner import (
    CompareError,
    compare,
    init_fingerprints,
    run_dir_of,
)
from rvq_cli.config import load_recipe
from rvq_cli.quantize import ESTIMATORS
from tiny import RVQ, recipe_file

STEPS = 2
OVERRIDES = [f"train.steps={STEPS}", "train.ckpt_every=1", "train.keep_last=3"]
NAMES = ["ste", "rotation"]
SEEDS = [0, 1]
FIGURES = ("curves", "diagnostics", "usage", "reconstructions")


def _compare(names, recipe, overrides=OVERRIDES, **kw):
    said = []
    result = compare(names, recipe, overrides, fid=False, quiet=True, say=said.append, **kw)
    return result, said


@pytest.fixture(scope="module")
def base(tmp_path_factory, shards):
    root = tmp_path_factory.mktemp("compare")
    recipe = recipe_file(root, shards)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        result, said = _compare(NAMES, recipe, out="cmp", seeds=len(SEEDS))
    return SimpleNamespace(root=root, recipe=recipe, result=result, said=said, out=root / "cmp")


@pytest.fixture
def copy(base, tmp_path, monkeypatch):
    """The module's comparison copied into tmp_path/cmp, with tmp_path as the working folder."""
    shutil.copytree(base.out, tmp_path / "cmp")
    monkeypatch.chdir(tmp_path)
    return Path("cmp")


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------------
# the report against the run directories
# --------------------------------------------------------------------------------------------


def test_compare_writes_the_report_and_figures(base):
    out, res = base.out, base.result
    assert res.estimators == NAMES and res.seeds == SEEDS
    assert [(r.name, r.seed) for r in res.runs] == [(n, s) for s in SEEDS for n in NAMES]
    assert [r.status for r in res.runs] == ["trained"] * 4
    assert [r.run_dir for r in res.runs] == [Path("cmp") / n / f"seed-{s}" for s in SEEDS for n in NAMES]
    assert res.json_path == Path("cmp") / "compare.json" and res.md_path == Path("cmp") / "compare.md"
    for name in FIGURES:
        png = out / "figures" / f"{name}.png"
        assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 1000, name
    assert set(res.figures) == set(FIGURES)
    data = json.loads((out / "compare.json").read_text())
    assert data["steps"] == STEPS and data["seeds"] == SEEDS and data["overrides"] == OVERRIDES
    assert data["estimators"] == NAMES
    assert [(r["estimator"], r["seed"]) for r in data["runs"]] == [(n, s) for s in SEEDS for n in NAMES]
    assert [r["status"] for r in data["runs"]] == ["trained"] * 4
    md = (out / "compare.md").read_text()
    assert md.startswith("# rvq compare: ste, rotation")
    lines = md.splitlines()
    assert sum(line.startswith("| ste |") for line in lines) == 1 + len(SEEDS)  # summary + one per seed
    assert any(line.startswith("| rotation − ste |") for line in lines)
    job = json.loads((out / "compare-job.json").read_text())
    assert {"model.quantizer.estimator", "output.dir", "train.steps", "train.seed"}.isdisjoint(job)
    for seed in SEEDS:
        for name in NAMES:  # each an ordinary run of its estimator and seed, finished, lock released
            run_dir = run_dir_of(out, name, seed)
            saved = load_recipe(run_dir / "recipe.yaml", check_paths=False)
            assert saved.model.quantizer.estimator == name and saved.train.steps == STEPS
            assert saved.train.seed == seed
            assert not (run_dir / ".compare.lock").exists()
    assert any("ste, seed 0: training 2 steps" in m for m in base.said)
    assert any("rotation, seed 1: training 2 steps" in m for m in base.said)


def test_runs_of_a_seed_start_from_the_same_weights(base):
    runs = base.result.runs
    for seed in SEEDS:
        fps = {(r.init_fingerprint, r.shared_fingerprint) for r in runs if r.seed == seed}
        assert len(fps) == 1
        recipe = load_recipe(base.recipe, OVERRIDES + [f"train.seed={seed}"], check_paths=False)
        assert fps == {init_fingerprints(recipe)}  # what the trainer recorded: what the seed builds
    assert all(re.fullmatch("[0-9a-f]{16}", f) for r in runs for f in (r.init_fingerprint, r.shared_fingerprint))
    assert all(r.init_fingerprint != r.shared_fingerprint for r in runs)
    assert runs[0].init_fingerprint != runs[2].init_fingerprint  # seeds 0 and 1 differ
    data = json.loads((base.out / "compare.json").read_text())
    assert [r["init_fingerprint"] for r in data["runs"]] == [r.init_fingerprint for r in runs]
    assert [r["shared_fingerprint"] for r in data["runs"]] == [r.shared_fingerprint for r in runs]
    assert not any("start from" in n for n in base.result.notes)


def test_train_metrics_are_the_mean_over_the_last_tenth_of_the_steps(base):
    data = json.loads((base.out / "compare.json").read_text())
    assert TRAIN_WINDOW == 0.1
    assert data["train_window"] == "mean over the logs of the last 10% of the steps"
    assert STEPS == 2  # the window below is written out for two steps
    for run, saved in zip(base.result.runs, data["runs"]):
        rows = _rows(base.root / run.run_dir)
        assert [r["step"] for r in rows] == [1, 2]
        for key in ("usage", "rec_loss", "quant_error", "perplexity", "grad_cos", "obtuse", "loss"):
            want = rows[1][key]  # the last tenth of 2 steps (steps > 1.8) is step 2 alone
            assert run.train[key] == pytest.approx(want, rel=1e-12), (run.name, key)
            assert saved["train"][key] == pytest.approx(want, rel=1e-12), (run.name, key)
        assert run.train["fallbacks"] == sum(r["fallbacks"] for r in rows)
        speeds = [r["images_per_s"] for r in rows[1:]]
        assert run.train["steps_per_s"] == pytest.approx(sum(speeds) / len(speeds) / 4, rel=1e-12)  # batch 4
        assert run.train["window_steps"] == [2, 2]
        assert run.history == rows


def test_train_summary_window_and_duplicate_steps(tmp_path):
    """The window on a longer, resumed log: steps 19 and 20 of 20; a step logged twice counts once."""
    from rvq_cli.compare.runner import _history, _train_summary

    rows = [{"step": s, "usage": s / 100, "rec_loss": 1.0 / s, "fallbacks": 1.0, "images_per_s": 8.0 * s}
            for s in range(1, 21)]
    # step 19 logged before an interruption, then again by the resumed run: the later log counts
    rows.insert(18, {"step": 19, "usage": 9.0, "rec_loss": 9.0, "fallbacks": 5.0, "images_per_s": 1.0})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    history = _history(tmp_path)
    assert [r["step"] for r in history] == list(range(1, 21)) and history[18]["usage"] == 0.19
    s = _train_summary(history, 20, images_per_step=8)
    assert s["window_steps"] == [19, 20]
    assert s["usage"] == pytest.approx((0.19 + 0.20) / 2)
    assert s["rec_loss"] == pytest.approx((1 / 19 + 1 / 20) / 2)
    assert s["fallbacks"] == 20.0
    assert s["steps_per_s"] == pytest.approx(sum(range(2, 21)) / 19)  # the first window left out
    assert _train_summary(history[:3], 20, 8)["window_steps"] == [3, 3]  # at least the last log


def test_eval_metrics_are_the_run_dirs_eval_json(base):
    data = json.loads((base.out / "compare.json").read_text())
    for run, saved in zip(base.result.runs, data["runs"]):
        report = json.loads((base.root / run.run_dir / "compare-eval.json").read_text())
        assert report["step"] == STEPS and report["estimator"] == run.name
        assert run.eval == report["metrics"]
        assert saved["eval"] == report["metrics"]
        assert run.code_counts == report["code_counts"]


# --------------------------------------------------------------------------------------------
# statistics over seeds, against numpy and scipy
# --------------------------------------------------------------------------------------------


def _per_seed(base, name, key):
    """The column's value per seed, read back from the run folders (not from the result)."""
    section, metric = key.split(".", 1)
    vals = []
    for seed in SEEDS:
        run_dir = base.root / run_dir_of(Path("cmp"), name, seed)
        if section == "eval":
            v = json.loads((run_dir / "compare-eval.json").read_text())["metrics"].get(metric)
        else:
            v = next(r for r in base.result.runs if r.name == name and r.seed == seed).train.get(metric)
        vals.append(v)
    return None if any(v is None for v in vals) else np.array(vals, dtype=np.float64)


def test_summary_is_mean_and_sample_std_over_seeds(base):
    data = json.loads((base.out / "compare.json").read_text())
    checked = 0
    for name in NAMES:
        for col in COLUMNS:
            vals = _per_seed(base, name, col.key)
            if vals is None:
                assert col.key not in base.result.summary[name]
                continue
            s = base.result.summary[name][col.key]
            assert s.values == pytest.approx(tuple(vals), rel=1e-12)
            assert s.mean == pytest.approx(vals.mean(), rel=1e-12, abs=1e-15)
            assert s.std == pytest.approx(vals.std(ddof=1), rel=1e-9, abs=1e-15)
            saved = data["summary"][name][col.key]
            assert saved["mean"] == pytest.approx(vals.mean(), rel=1e-12, abs=1e-15)
            assert saved["values"] == pytest.approx(list(vals), rel=1e-12)
            checked += 1
    assert checked >= 16  # the columns logged without Inception weights, for both estimators


def test_paired_differences_match_scipy(base):
    data = json.loads((base.out / "compare.json").read_text())
    assert data["differences"]["baseline"] == "ste" and data["differences"]["level"] == 0.95
    assert set(base.result.differences) == {"rotation"}
    checked = 0
    for col in COLUMNS:
        a, b = _per_seed(base, "rotation", col.key), _per_seed(base, "ste", col.key)
        if a is None or b is None:
            continue
        d = base.result.differences["rotation"][col.key]
        assert d.mean == pytest.approx((a - b).mean(), rel=1e-9, abs=1e-15)
        if np.all(a - b == (a - b)[0]):  # no spread: the interval is the point itself
            assert d.low == d.high == pytest.approx(d.mean)
            continue
        ci = scipy.stats.ttest_rel(a, b).confidence_interval(0.95)
        assert (d.low, d.high) == pytest.approx((ci.low, ci.high), rel=1e-9, abs=1e-15), col.key
        saved = data["differences"]["estimators"]["rotation"][col.key]
        assert (saved["low"], saved["high"]) == pytest.approx((ci.low, ci.high), rel=1e-9, abs=1e-15)
        assert saved["excludes_zero"] == (ci.low > 0 or ci.high < 0)
        checked += 1
    assert checked >= 6


@pytest.mark.parametrize("n", [2, 3, 5, 12])
def test_paired_difference_against_scipy_on_known_data(n):
    from rvq_cli.compare.stats import paired_difference, summarize

    rng = np.random.default_rng(n)
    a, b = rng.normal(1.0, 0.3, n), rng.normal(0.8, 0.3, n)
    d = paired_difference(list(a), list(b))
    ci = scipy.stats.ttest_rel(a, b).confidence_interval(0.95)
    assert d.mean == pytest.approx((a - b).mean()) and d.std == pytest.approx((a - b).std(ddof=1))
    assert (d.low, d.high) == pytest.approx((ci.low, ci.high), rel=1e-10)
    assert d.excludes_zero == (ci.low > 0 or ci.high < 0)
    s = summarize(list(a))
    assert (s.mean, s.std) == pytest.approx((a.mean(), a.std(ddof=1)))
    one = paired_difference([1.0], [0.5])  # one seed: a difference, no interval
    assert one.mean == 0.5 and one.low is None and not one.excludes_zero and summarize([2.0]).std is None


def _best_by_scipy(base, names):
    """The best rule written out independently: the estimator whose seed-paired t interval
    against every other estimator lies wholly on the better side of zero."""
    best = {}
    for col in COLUMNS:
        if not col.better:
            continue
        vals = {n: v for n in names if (v := _per_seed(base, n, col.key)) is not None}
        for cand, mine in vals.items():
            ok = True
            for other, theirs in vals.items():
                if other == cand:
                    continue
                diff = mine - theirs
                if np.all(diff == diff[0]):  # zero spread: the interval is the point
                    low = high = diff[0]
                else:
                    ci = scipy.stats.ttest_rel(mine, theirs).confidence_interval(0.95)
                    low, high = ci.low, ci.high
                ok &= bool(low > 0) if col.better == "high" else bool(high < 0)
            if ok and len(vals) > 1:
                best[col.key] = [cand]
    return best


def test_best_is_marked_only_where_the_interval_excludes_zero(base):
    best = base.result.best
    assert best == _best_by_scipy(base, NAMES)
    assert set(best) <= {c.key for c in COLUMNS if c.better}  # diagnostics are not ranked
    assert "eval.rfid" not in best  # no r-FID without --fid
    assert json.loads((base.out / "compare.json").read_text())["best"] == best
    # compare.md bolds exactly the best cells of the summary table
    md = (base.out / "compare.md").read_text().splitlines()
    header = next(line for line in md if line.startswith("| method |"))
    labels = [c.strip() for c in header.split("|")]
    for name in NAMES:
        cells = [c.strip() for c in next(line for line in md if line.startswith(f"| {name} |")).split("|")]
        for col in COLUMNS:
            if col.label in labels:
                cell = cells[labels.index(col.label)]
                assert cell.startswith("**") == (name in best.get(col.key, [])), (name, col.key, cell)


def test_code_counts_cover_every_validation_token(base):
    recipe = load_recipe(base.recipe, OVERRIDES, check_paths=False)
    factor = 2 ** (len(recipe.model.encoder.ch_mult) - 1)
    tokens_per_image = (recipe.data.image_size // factor) ** 2
    assert tokens_per_image == 64  # 16×16 crops -> 8×8 tokens
    for run in base.result.runs:
        report = json.loads((base.root / run.run_dir / "compare-eval.json").read_text())
        assert report["data"]["images"] == 8  # the validation shard holds 8 images
        assert len(run.code_counts) == recipe.model.quantizer.codebook_size
        assert sum(run.code_counts) == report["data"]["images"] * tokens_per_image
        assert run.eval["codes_used"] == sum(c > 0 for c in run.code_counts)


def test_curves_show_the_mean_and_spread_over_seeds(base, tmp_path):
    from rvq_cli.compare.report import CURVES, plot_series, plot_usage

    drawn = plot_series(base.result.runs, CURVES, tmp_path / "c.png", "t")
    for name in NAMES:
        steps, mean, low, high = drawn["rec_loss"][name]
        per_seed = np.array([[r["rec_loss"] for r in _rows(base.root / run_dir_of(Path("cmp"), name, s))]
                             for s in SEEDS])
        assert steps == tuple(range(1, STEPS + 1))
        assert np.allclose(mean, per_seed.mean(0)) and np.allclose(low, per_seed.min(0))
        assert np.allclose(high, per_seed.max(0))
    usage = plot_usage(base.result.runs, tmp_path / "u.png")
    for name in NAMES:
        assert len(usage[name]) == len(SEEDS)
        for counts, run in zip(usage[name], [r for r in base.result.runs if r.name == name]):
            assert list(counts) == sorted(run.code_counts, reverse=True)


def test_init_fingerprint_depends_on_the_seed_not_the_estimator(base):
    from accelerate.utils import set_seed

    from rvq_cli.models import build_tokenizer

    def recipe(*extra):
        return load_recipe(base.recipe, OVERRIDES + list(extra), check_paths=False)

    def init_fingerprint(r):
        return init_fingerprints(r)[0]

    ste, rot = recipe("model.quantizer.estimator=ste"), recipe("model.quantizer.estimator=rotation")
    assert init_fingerprint(ste) == init_fingerprint(rot) == base.result.runs[0].init_fingerprint
    assert init_fingerprint(ste) == init_fingerprint(ste)  # rebuilt from the seed: the same weights again
    assert init_fingerprint(recipe("train.seed=1")) != init_fingerprint(recipe("train.seed=0"))
    assert init_fingerprint(recipe("model.quantizer.codebook_size=32")) != init_fingerprint(ste)  # another model
    # the weights themselves, built as the trainer builds them
    states = []
    for r in (ste, rot, recipe("model.quantizer.estimator=ste", "train.seed=1")):
        set_seed(r.train.seed)
        states.append(build_tokenizer(r.model, r.data.image_size).state_dict())
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])

    def sha256_16(state: dict[str, torch.Tensor]) -> str:
        """The first 16 hex digits of SHA-256 over (name, raw bytes) of every tensor, by name."""
        h = hashlib.sha256()
        for name in sorted(state):
            h.update(name.encode() + state[name].detach().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    assert [sha256_16(s) for s in states] == [init_fingerprint(ste), init_fingerprint(rot),
                                              init_fingerprint(recipe("train.seed=1"))]


# --------------------------------------------------------------------------------------------
# an output folder continued: reuse, resume, more seeds, another recipe
# --------------------------------------------------------------------------------------------


def test_second_compare_reuses_every_run(base, copy):
    before = {name: _mtimes(copy / name) for name in NAMES}
    res, said = _compare(NAMES, base.recipe, out=copy, seeds=SEEDS)
    assert [r.status for r in res.runs] == ["reused"] * 4
    assert not any("training" in m or "evaluating" in m for m in said)
    for name in NAMES:
        assert _mtimes(copy / name) == before[name], name  # checkpoints, metrics, eval.json untouched
    for new, old in zip(res.runs, base.result.runs):
        assert new.eval == old.eval and new.train == old.train and new.init_fingerprint == old.init_fingerprint
    assert res.summary == base.result.summary and res.differences == base.result.differences
    assert [r["status"] for r in json.loads((copy / "compare.json").read_text())["runs"]] == ["reused"] * 4


def test_a_moved_comparison_and_an_older_record_are_reused(base, tmp_path):
    """The folder moved elsewhere (every run's output.dir is the old place), and its record
    written before a recipe key existed (the key missing): the same comparison, every run reused.
    A recorded key with another value than the default is still another recipe."""
    moved = tmp_path / "elsewhere" / "cmp"
    shutil.copytree(base.out, moved)
    record = moved / "compare-job.json"
    job = json.loads(record.read_text())
    assert job.pop("model.quantizer.affine_sync") is True  # the default
    record.write_text(json.dumps(job))
    res, _ = _compare(NAMES, base.recipe, out=moved, seeds=SEEDS)
    assert [r.status for r in res.runs] == ["reused"] * 4
    assert [r.run_dir for r in res.runs] == [moved / n / f"seed-{s}" for s in SEEDS for n in NAMES]
    record.write_text(json.dumps(dict(job, **{"model.quantizer.affine_sync": False})))
    with pytest.raises(CompareError, match="model.quantizer.affine_sync: False before, True now"):
        _compare(NAMES, base.recipe, out=moved, seeds=SEEDS)


def test_one_seed_of_a_comparison_reuses_its_runs(base, copy):
    res, said = _compare(NAMES, base.recipe, out=copy, seeds=[1])
    assert [(r.name, r.seed, r.status) for r in res.runs] == [("ste", 1, "reused"), ("rotation", 1, "reused")]
    assert res.best == {} and res.differences["rotation"]["train.usage"].low is None
    assert any("one seed" in n for n in res.notes)


def test_more_seeds_train_only_the_new_ones(base, copy):
    res, said = _compare(NAMES, base.recipe, out=copy, seeds=3)
    assert res.seeds == [0, 1, 2]
    assert [(r.name, r.seed, r.status) for r in res.runs] == \
        [(n, s, "reused" if s < 2 else "trained") for s in range(3) for n in NAMES]
    assert sum("training" in m for m in said) == 2
    assert all(len(s.values) == 3 for s in res.summary["ste"].values())
    fps = [r.init_fingerprint for r in res.runs if r.seed == 2]
    assert fps[0] == fps[1] and fps[0] not in {r.init_fingerprint for r in base.result.runs}


def test_partial_run_resumes_to_the_recipes_steps(base, copy):
    run_dir = run_dir_of(copy, "rotation", 0)
    final = run_dir / f"ckpt-{STEPS:08d}"
    assert (run_dir / f"ckpt-{STEPS - 1:08d}").is_dir()
    shutil.rmtree(final)
    res, said = _compare(NAMES, base.recipe, out=copy, seeds=SEEDS)
    assert [r.status for r in res.runs] == ["reused", "resumed", "reused", "reused"]
    assert any("rotation, seed 0: resuming" in m for m in said)
    assert json.loads((final / "state.json").read_text())["step"] == STEPS
    assert [r["step"] for r in res.runs[1].history] == list(range(1, STEPS + 1))
    # the resumed run ends with the weights the uninterrupted one had
    a = load_file(str(run_dir_of(base.out, "rotation", 0) / final.name / "model.safetensors"))
    b = load_file(str(final / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_another_recipe_needs_restart(base, copy):
    before = _mtimes(copy)
    with pytest.raises(CompareError, match="Use restart to start over") as info:  # from Python: the parameter
        _compare(NAMES, base.recipe, OVERRIDES + ["optim.lr=0.002"], out=copy)
    assert "another recipe" in str(info.value)
    assert _mtimes(copy) == before  # nothing touched
    res, _ = _compare(["ste"], base.recipe, OVERRIDES + ["optim.lr=0.002"], out=copy, restart=True)
    assert [r.status for r in res.runs] == ["trained"]
    assert not (copy / "rotation").exists()  # a run of the old recipe is gone
    assert not run_dir_of(copy, "ste", 1).exists()
    assert load_recipe(run_dir_of(copy, "ste", 0) / "recipe.yaml", check_paths=False).optim.lr == 0.002
    assert json.loads((copy / "compare-job.json").read_text())["optim.lr"] == 0.002


def test_another_recipe_error_names_the_setting(base, copy):
    with pytest.raises(CompareError) as info:
        _compare(NAMES, base.recipe, OVERRIDES + ["optim.lr=0.002"], out=copy)
    assert "optim.lr: 0.001 before, 0.002 now" in str(info.value), str(info.value)


def test_restart_of_one_estimator_keeps_the_others(base, copy):
    before = _mtimes(copy / "rotation")
    res, _ = _compare(["ste"], base.recipe, out=copy, restart=True)
    assert [r.status for r in res.runs] == ["trained"]
    assert (copy / "rotation").is_dir(), "--restart ste removed the rotation run of the same recipe"
    assert _mtimes(copy / "rotation") == before


def test_restart_of_one_seed_keeps_the_other_seeds(base, copy):
    before = {s: _mtimes(run_dir_of(copy, "ste", s)) for s in SEEDS}
    res, _ = _compare(["ste"], base.recipe, out=copy, seeds=[1], restart=True)
    assert [(r.seed, r.status) for r in res.runs] == [(1, "trained")]
    assert _mtimes(run_dir_of(copy, "ste", 0)) == before[0]  # seed 0 untouched
    assert run_dir_of(copy, "rotation", 1).is_dir()


def test_more_steps_extend_every_run(base, copy):
    res, _ = _compare(NAMES, base.recipe, [f"train.steps={STEPS + 1}", "train.ckpt_every=1", "train.keep_last=3"],
                      out=copy)
    assert [r.status for r in res.runs] == ["resumed", "resumed"]
    for r in res.runs:
        assert r.eval and json.loads((r.run_dir / "compare-eval.json").read_text())["step"] == STEPS + 1
        assert _rows(r.run_dir)[-1]["step"] == STEPS + 1
    with pytest.raises(CompareError, match="more than"):  # and back to fewer is refused
        _compare(NAMES, base.recipe, OVERRIDES, out=copy)


@pytest.mark.parametrize("seeds, fragment", [([], "at least one seed"), ([0, 0], "given twice: 0"),
                                             ([-1], "non-negative"), (0, "at least 1")])
def test_bad_seeds_are_errors(base, copy, seeds, fragment):
    with pytest.raises(CompareError, match=re.escape(fragment)):
        _compare(NAMES, base.recipe, out=copy, seeds=seeds)


# --------------------------------------------------------------------------------------------
# locks and errors
# --------------------------------------------------------------------------------------------


def test_live_lock_names_the_process(tmp_path, shards):
    out = tmp_path / "out"
    run_dir_of(out, "ste", 0).mkdir(parents=True)
    lock = run_dir_of(out, "ste", 0) / ".compare.lock"
    lock.write_text(str(os.getpid()))
    with pytest.raises(CompareError, match=f"process {os.getpid()}"):
        _compare(["ste"], recipe_file(tmp_path, shards), out=out)
    assert lock.read_text() == str(os.getpid())  # still ours
    assert not list(run_dir_of(out, "ste", 0).glob("ckpt-*"))


def test_stale_lock_is_taken_over(base, copy):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not Path(f"/proc/{proc.pid}").exists()
    lock = run_dir_of(copy, "ste", 0) / ".compare.lock"
    lock.write_text(str(proc.pid))
    res, _ = _compare(["ste"], base.recipe, out=copy)
    assert [r.status for r in res.runs] == ["reused"]
    assert not lock.exists()


@pytest.mark.parametrize("names, fragment", [
    (["nope"], "'nope': unknown estimator 'nope'"),
    (["ste", "rotation", "ste"], "named twice: ste"),
    ([], "at least one method"),
])
def test_bad_estimator_lists_are_errors(tmp_path, shards, names, fragment):
    out = tmp_path / "out"
    with pytest.raises(CompareError) as info:
        _compare(names, recipe_file(tmp_path, shards), out=out)
    assert fragment in str(info.value)
    if names == ["nope"]:
        assert all(n in str(info.value) for n in ESTIMATORS)
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# the CLI
# --------------------------------------------------------------------------------------------


def rvq(*args, cwd):
    env = dict(os.environ, COLUMNS="120", RVQ_COMPILE="never")
    return subprocess.run([RVQ, *args], check=False, capture_output=True, text=True, env=env, timeout=300,
                          cwd=cwd)


def test_cli_synthetic_field(tmp_path):
    res = rvq("compare", "ste", "rotation", "--synthetic", "field", "--out", str(tmp_path / "f"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    data = json.loads((tmp_path / "f" / "field.json").read_text())
    assert all(set(per) == {"ste", "rotation"} for per in data["estimators"].values())
    assert (tmp_path / "f" / "field.png").is_file()
    assert "Gradient fields" in res.stdout and "Traceback" not in res.stderr


@pytest.mark.parametrize("args, fragments", [
    (("ste", "--synthetic", "nope"), ["--synthetic nope: unknown problem", "himmelblau, voronoi, field"]),
    (("ste", "--synthetic", "field", "--steps", "3"), ["take no recipe", "--steps"]),
    (("bogus", "--recipe", "RECIPE"), ["unknown estimator 'bogus'", *ESTIMATORS]),
    (("rotation:nope", "--recipe", "RECIPE"), ["unknown codebook 'nope'", "plain, simvq, affine"]),
    (("fsq:8-x", "--recipe", "RECIPE"), ["FSQ levels are integers joined by '-'"]),
    (("fsq:8-2", "--recipe", "RECIPE"), ["'fsq:8-2'", "every level must be >= 3"]),
    (("ste", "--steps", "0"), ["--steps must be positive, got 0"]),
    (("ste", "--seeds", "0"), ["--seeds must be positive, got 0"]),
    (("ste", "--synthetic", "voronoi", "--seeds", "3"), ["runs one fixed setting", "drop --seeds"]),
    # a shipped recipe by name (its ImageNet shards are not here); a name that is none; the default, the quickstart
    (("ste", "--recipe", "vqgan_f4"), ["vqgan_f4 has 2 problems", "data/imagenet/train-"]),
    (("ste", "--recipe", "nope.yaml"), ["nor the name of a shipped recipe", "quickstart, ", "vqgan_f4"]),
    (("ste", "data.val=null"), ["quickstart.yaml has no validation set"]),
])
def test_cli_bad_compare_arguments_exit_2(tmp_path, shards, args, fragments):
    recipe = str(recipe_file(tmp_path, shards))
    res = rvq("compare", *[recipe if a == "RECIPE" else a for a in args], cwd=tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "error:" in res.stderr and "Traceback" not in res.stderr + res.stdout
    err = " ".join(res.stderr.split())  # rich may wrap the message
    for f in fragments:
        assert f in err, (f, res.stderr)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "run").exists()


def test_cli_prints_the_tables_over_seeds(base, copy):
    """The CLI on the module's comparison (every run reused): the summary over seeds, then the
    paired differences, with the same cells as compare.md."""
    from rvq_cli.compare.report import difference_table, summary_table

    res = rvq("compare", "ste", "rotation", "--recipe", str(base.recipe), "--seeds", "2", "--out", str(copy),
              "--no-fid", "--quiet", *OVERRIDES, cwd=copy.parent)
    assert res.returncode == 0, res.stdout + res.stderr
    text = " ".join(res.stdout.split())
    assert "mean ± std over 2 seeds" in text and "seed-paired difference to ste" in text
    again = json.loads((copy / "compare.json").read_text())
    assert again["seeds"] == SEEDS and [r["status"] for r in again["runs"]] == ["reused"] * 4
    summary, diff = summary_table(base.result), difference_table(base.result)
    for row in summary.rows + diff.rows:
        assert row[0].text in res.stdout
    usage = summary.rows[0][summary.header.index("usage ↑")].text
    assert usage in res.stdout


def test_runs_from_before_seed_folders_are_refused_then_restarted(base, copy):
    """rvq compare before --seeds kept OUT/<estimator>/ as the run itself: never mistaken for a
    comparison of another recipe, never reused as a seed; --restart replaces it."""
    old = copy / "ste"
    shutil.rmtree(old)
    shutil.copytree(base.out / "ste" / "seed-0", old)
    with pytest.raises(CompareError, match="before rvq compare kept one folder per seed") as err:
        _compare(NAMES, base.recipe, out=str(copy), seeds=len(SEEDS))
    assert "another recipe" not in str(err.value) and (old / "metrics.jsonl").is_file()
    result, _ = _compare(["ste"], base.recipe, out=str(copy), seeds=1, restart=True)
    assert result.runs[0].run_dir == run_dir_of(copy, "ste", 0) and not (old / "metrics.jsonl").exists()
