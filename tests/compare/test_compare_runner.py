"""rvq compare on the tiny recipe: the report against the run directories, identical initial
weights, reuse / resume / restart of an output folder, locks, errors, and the CLI.

One comparison (ste, rotation; 2 steps) is trained once per module into a folder addressed by a
relative path (``cmp``), so every run's recorded output.dir is relative: tests that change a
comparison copy that folder into their own tmp_path and run from there."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("RVQ_COMPILE", "never")
# tests/train is on sys.path only once pytest has collected a file there (after tests/compare)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "train"))

import pytest
import torch
from safetensors.torch import load_file
from test_train import recipe_file, shards  # noqa: F401

from rvq_cli.compare.runner import (
    COLUMNS,
    TRAIN_WINDOW,
    CompareError,
    compare,
    init_fingerprint,
)
from rvq_cli.config import load_recipe
from rvq_cli.quantize import ESTIMATORS

RVQ = shutil.which("rvq") or os.path.join(os.path.dirname(sys.executable), "rvq")
STEPS = 2
OVERRIDES = [f"train.steps={STEPS}", "train.ckpt_every=1", "train.keep_last=3"]
NAMES = ["ste", "rotation"]
FIGURES = ("curves", "diagnostics", "usage", "reconstructions")


def _compare(names, recipe, overrides=OVERRIDES, **kw):
    said = []
    result = compare(names, recipe, overrides, fid=False, quiet=True, say=said.append, **kw)
    return result, said


@pytest.fixture(scope="module")
def base(tmp_path_factory, shards):  # noqa: F811
    root = tmp_path_factory.mktemp("compare")
    recipe = recipe_file(root, shards)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        result, said = _compare(NAMES, recipe, out="cmp")
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
    assert [r.name for r in res.runs] == NAMES
    assert [r.status for r in res.runs] == ["trained", "trained"]
    assert res.json_path == Path("cmp") / "compare.json" and res.md_path == Path("cmp") / "compare.md"
    for name in FIGURES:
        png = out / "figures" / f"{name}.png"
        assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 1000, name
    assert set(res.figures) == set(FIGURES)
    data = json.loads((out / "compare.json").read_text())
    assert data["steps"] == STEPS and data["seed"] == 0 and data["overrides"] == OVERRIDES
    assert [r["estimator"] for r in data["runs"]] == NAMES
    assert [r["status"] for r in data["runs"]] == ["trained", "trained"]
    md = (out / "compare.md").read_text()
    assert md.startswith("# rvq compare: ste, rotation")
    assert any(line.startswith("| ste |") for line in md.splitlines())
    assert any(line.startswith("| rotation |") for line in md.splitlines())
    job = json.loads((out / "compare-job.json").read_text())
    assert {"model.quantizer.estimator", "output.dir", "train.steps"}.isdisjoint(job) and job["train.seed"] == 0
    for name in NAMES:  # each an ordinary run of its estimator, finished, lock released
        saved = load_recipe(out / name / "recipe.yaml", check_paths=False)
        assert saved.model.quantizer.estimator == name and saved.train.steps == STEPS
        assert not (out / name / ".compare.lock").exists()
    assert any("ste: training 2 steps" in m for m in base.said)


def test_both_runs_start_from_the_same_weights(base):
    fps = [r.init_fingerprint for r in base.result.runs]
    assert fps[0] == fps[1] and len(fps[0]) == 16 and int(fps[0], 16) >= 0
    data = json.loads((base.out / "compare.json").read_text())
    assert [r["init_fingerprint"] for r in data["runs"]] == fps
    assert not any("identical weights" in n for n in base.result.notes)


def test_train_metrics_are_the_mean_over_the_last_tenth_of_the_steps(base):
    data = json.loads((base.out / "compare.json").read_text())
    for run, saved in zip(base.result.runs, data["runs"]):
        rows = _rows(base.root / run.run_dir)
        assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
        window = [r for r in rows if r["step"] > STEPS * (1 - TRAIN_WINDOW)] or rows[-1:]
        assert window[-1]["step"] == STEPS
        for key in ("usage", "rec_loss", "quant_error", "perplexity", "grad_cos", "obtuse", "loss"):
            want = sum(r[key] for r in window) / len(window)
            assert run.train[key] == pytest.approx(want, rel=1e-12), (run.name, key)
            assert saved["train"][key] == pytest.approx(want, rel=1e-12), (run.name, key)
        assert run.train["fallbacks"] == sum(r["fallbacks"] for r in rows)
        speeds = [r["images_per_s"] for r in rows[1:]]
        assert run.train["steps_per_s"] == pytest.approx(sum(speeds) / len(speeds) / 4, rel=1e-12)  # batch 4
        assert run.train["window_steps"] == [window[0]["step"], STEPS]
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


def test_best_values_are_recomputed(base):
    runs = base.result.runs
    best = base.result.best
    for key, pick in (("train.quant_error", min), ("eval.quant_error", min), ("train.usage", max),
                      ("eval.usage", max), ("eval.rec_loss", min), ("train.rec_loss", min)):
        section, metric = key.split(".")
        vals = {r.name: getattr(r, section)[metric] for r in runs}
        top = pick(vals.values())
        assert best[key] == [n for n, v in vals.items() if v == top], key
    ranked = {c.key for c in COLUMNS if c.better}
    assert set(best) <= ranked
    assert not {c.key for c in COLUMNS if not c.better} & set(best)  # diagnostics are not ranked
    assert "eval.rfid" not in best  # no r-FID without --fid
    assert json.loads((base.out / "compare.json").read_text())["best"] == best
    # compare.md bolds exactly the best cell of the quantization error column
    md = (base.out / "compare.md").read_text().splitlines()
    header = next(line for line in md if line.startswith("| estimator |"))
    col = [c.strip() for c in header.split("|")].index("quant err ↓")
    for r in runs:
        cell = [c.strip() for c in next(line for line in md if line.startswith(f"| {r.name} |")).split("|")][col]
        assert cell.startswith("**") == (r.name in best["train.quant_error"]), (r.name, cell)


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


# --------------------------------------------------------------------------------------------
# identical initial weights
# --------------------------------------------------------------------------------------------


def test_init_fingerprint_depends_on_the_seed_not_the_estimator(base):
    from accelerate.utils import set_seed

    from rvq_cli.train.build import build_tokenizer

    def recipe(*extra):
        return load_recipe(base.recipe, OVERRIDES + list(extra), check_paths=False)

    ste, rot = recipe("model.quantizer.estimator=ste"), recipe("model.quantizer.estimator=rotation")
    assert init_fingerprint(ste) == init_fingerprint(rot) == base.result.runs[0].init_fingerprint
    assert init_fingerprint(recipe("train.seed=1")) != init_fingerprint(recipe("train.seed=0"))
    # the weights themselves, built as the trainer builds them
    states = []
    for r in (ste, rot, recipe("model.quantizer.estimator=ste", "train.seed=1")):
        set_seed(r.train.seed)
        states.append(build_tokenizer(r.model, r.data.image_size).state_dict())
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])


# --------------------------------------------------------------------------------------------
# an output folder continued: reuse, resume, another recipe
# --------------------------------------------------------------------------------------------


def test_second_compare_reuses_both_runs(base, copy):
    before = {name: _mtimes(copy / name) for name in NAMES}
    res, said = _compare(NAMES, base.recipe, out=copy)
    assert [r.status for r in res.runs] == ["reused", "reused"]
    assert not any("training" in m or "evaluating" in m for m in said)
    for name in NAMES:
        assert _mtimes(copy / name) == before[name], name  # checkpoints, metrics, eval.json untouched
    for new, old in zip(res.runs, base.result.runs):
        assert new.eval == old.eval and new.train == old.train and new.init_fingerprint == old.init_fingerprint
    assert [r["status"] for r in json.loads((copy / "compare.json").read_text())["runs"]] == ["reused", "reused"]


def test_partial_run_resumes_to_the_recipes_steps(base, copy):
    final = copy / "rotation" / f"ckpt-{STEPS:08d}"
    assert (copy / "rotation" / f"ckpt-{STEPS - 1:08d}").is_dir()
    shutil.rmtree(final)
    res, said = _compare(NAMES, base.recipe, out=copy)
    assert [r.status for r in res.runs] == ["reused", "resumed"]
    assert any("rotation: resuming" in m for m in said)
    assert json.loads((final / "state.json").read_text())["step"] == STEPS
    assert [r["step"] for r in res.runs[1].history] == list(range(1, STEPS + 1))
    # the resumed run ends with the weights the uninterrupted one had
    a = load_file(str(base.out / "rotation" / final.name / "model.safetensors"))
    b = load_file(str(final / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_another_recipe_needs_restart(base, copy):
    before = _mtimes(copy)
    with pytest.raises(CompareError, match="--restart") as info:
        _compare(NAMES, base.recipe, OVERRIDES + ["train.seed=1"], out=copy)
    assert "another recipe" in str(info.value)
    assert _mtimes(copy) == before  # nothing touched
    res, _ = _compare(["ste"], base.recipe, OVERRIDES + ["train.seed=1"], out=copy, restart=True)
    assert [r.status for r in res.runs] == ["trained"]
    assert not (copy / "rotation").exists()  # a run of the old recipe is gone
    assert load_recipe(copy / "ste" / "recipe.yaml", check_paths=False).train.seed == 1
    assert json.loads((copy / "compare-job.json").read_text())["train.seed"] == 1
    assert res.runs[0].init_fingerprint != base.result.runs[0].init_fingerprint


def test_another_recipe_error_names_the_setting(base, copy):
    with pytest.raises(CompareError) as info:
        _compare(NAMES, base.recipe, OVERRIDES + ["train.seed=1"], out=copy)
    assert "train.seed: 0 before, 1 now" in str(info.value), str(info.value)


def test_restart_of_one_estimator_keeps_the_others(base, copy):
    before = _mtimes(copy / "rotation")
    res, _ = _compare(["ste"], base.recipe, out=copy, restart=True)
    assert [r.status for r in res.runs] == ["trained"]
    assert (copy / "rotation").is_dir(), "--restart ste removed the rotation run of the same recipe"
    assert _mtimes(copy / "rotation") == before


def test_more_steps_extend_every_run(base, copy):
    res, _ = _compare(NAMES, base.recipe, [f"train.steps={STEPS + 1}", "train.ckpt_every=1", "train.keep_last=3"],
                      out=copy)
    assert [r.status for r in res.runs] == ["resumed", "resumed"]
    for r in res.runs:
        assert r.eval and json.loads((r.run_dir / "compare-eval.json").read_text())["step"] == STEPS + 1
        assert _rows(r.run_dir)[-1]["step"] == STEPS + 1
    with pytest.raises(CompareError, match="more than"):  # and back to fewer is refused
        _compare(NAMES, base.recipe, OVERRIDES, out=copy)


# --------------------------------------------------------------------------------------------
# locks and errors
# --------------------------------------------------------------------------------------------


def test_live_lock_names_the_process(tmp_path, shards):  # noqa: F811
    out = tmp_path / "out"
    (out / "ste").mkdir(parents=True)
    lock = out / "ste" / ".compare.lock"
    lock.write_text(str(os.getpid()))
    with pytest.raises(CompareError, match=f"process {os.getpid()}"):
        _compare(["ste"], recipe_file(tmp_path, shards), out=out)
    assert lock.read_text() == str(os.getpid())  # still ours
    assert not list((out / "ste").glob("ckpt-*"))


def test_stale_lock_is_taken_over(base, copy):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not Path(f"/proc/{proc.pid}").exists()
    lock = copy / "ste" / ".compare.lock"
    lock.write_text(str(proc.pid))
    res, _ = _compare(["ste"], base.recipe, out=copy)
    assert [r.status for r in res.runs] == ["reused"]
    assert not lock.exists()


@pytest.mark.parametrize("names, fragment", [
    (["nope"], "unknown estimator(s) nope"),
    (["ste", "rotation", "ste"], "named twice: ste"),
    ([], "at least one estimator"),
])
def test_bad_estimator_lists_are_errors(tmp_path, shards, names, fragment):  # noqa: F811
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
    (("bogus", "--recipe", "RECIPE"), ["unknown estimator(s) bogus", *ESTIMATORS]),
    (("ste", "--steps", "0"), ["--steps must be positive, got 0"]),
])
def test_cli_bad_compare_arguments_exit_2(tmp_path, shards, args, fragments):  # noqa: F811
    recipe = str(recipe_file(tmp_path, shards))
    res = rvq("compare", *[recipe if a == "RECIPE" else a for a in args], cwd=tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "error:" in res.stderr and "Traceback" not in res.stderr + res.stdout
    err = " ".join(res.stderr.split())  # rich may wrap the message
    for f in fragments:
        assert f in err, (f, res.stderr)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "run").exists()
