"""``rvq compare``: one recipe trained once per method and seed, the method the only difference
within a seed, then every run evaluated on the same validation set and put side by side (the
paper's Table 1), with the spread over seeds and seed-paired differences. A method is an
estimator, an estimator on a codebook parameterisation, or FSQ (:mod:`.methods`).

Layout of the output folder::

    OUT/compare-job.json          the recipe the comparison is of (pins what may continue here)
    OUT/<method>/seed-<S>/        an ordinary run directory (checkpoints, metrics.jsonl), plus
                                  compare-eval.json: rvq eval on the recipe's validation set
    OUT/compare.json, compare.md  the results; OUT/figures/*.png the visual report

Within a seed every run starts from the same encoder, decoder and discriminator weights, those
the recipe's seed builds (:mod:`rvq_cli.training.start`; checked: each run records the fingerprint
of the weights it started from), and reads the same data in the same order (the shard streams
have their own seeded generators). A run that reached the recipe's step count and has its
``compare-eval.json`` is reused (never a plain ``eval.json``, which ``rvq eval`` may have
written on other data), a run with an earlier checkpoint resumes, so an interrupted comparison
continues where it stopped. Separate processes may each train one method into the same
OUT (each run directory is locked while trained); a last ``rvq compare`` naming them all then
only evaluates what is missing and writes the report.

This module trains and evaluates; what it returns (:class:`~.results.CompareResult`, its
columns and statistics) is defined in :mod:`.results`, and :mod:`.report` renders it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from ..config import Recipe, RecipeError, load_recipe
from ..errors import RvqError, option
from ..files import write_json_atomic
from ..jobs import job_differences
from ..quantize import ESTIMATORS
from ..runs import (
    METRICS,
    RESUMABLE_CHANGES,
    CheckpointError,
    flat_recipe,
    latest_checkpoint,
    read_state,
    recipe_changes,
    saved_recipe,
    saved_step,
)
from ..training.start import adopt_shared, fingerprint, reference_weights, seeded_start, shared_weights
from .methods import Method, method_folder, parse_method
from .results import TRAIN_WINDOW, CompareResult, EstimatorRun, best_values, missing_values, seed_statistics, to_json

__all__ = ["CompareError", "compare", "init_fingerprints", "run_dir_of"]

GRID_IMAGES = 8
EVAL_FILE = "compare-eval.json"  # the comparison's own evaluation of each run (beside compare-eval.png)
REPORT_FILES = ("compare.json", "compare.md", "figures")
REFERENCE_STATS = "reference-stats.npz"  # the validation originals' FID statistics, shared by every run


class CompareError(RvqError):
    """A comparison that cannot start or continue; the message says why and what to do."""


def init_fingerprints(recipe: Recipe, shared: dict | None = None) -> tuple[str, str]:
    """The fingerprints (whole tokenizer, shared part) of the weights a new run of ``recipe``
    starts from, built as the trainer builds them (seeded, then ``shared`` adopted when given);
    for runs saved before the trainer recorded them."""
    model, disc = seeded_start(recipe)
    if shared is not None:
        adopt_shared(model, disc, shared)
    return fingerprint(model.state_dict()), fingerprint(shared_weights(model, disc))


def _job(recipe: Recipe) -> dict:
    """What every run of the comparison shares, as dotted keys: the recipe without the estimator,
    the seed, the output dir and the step count (a comparison may be extended to more seeds, and
    to more steps: every run then resumes to the new count)."""
    flat = flat_recipe(recipe)
    for key in ("model.quantizer.estimator", "train.seed", "output.dir", "train.steps"):
        flat.pop(key)
    return flat


def run_dir_of(out: Path, name: str, seed: int) -> Path:
    """The run directory of one method and seed in a comparison's output folder."""
    return out / method_folder(name) / f"seed-{seed}"


def _check_seeds(seeds: list[int]) -> None:
    if not seeds:
        raise CompareError(f"give at least one seed ({option('seeds')} N trains seeds S, S+1, ..., S+N-1 from the "
                           "recipe's train.seed S).")
    bad = [s for s in seeds if not isinstance(s, int) or isinstance(s, bool) or s < 0]
    if bad:
        raise CompareError(f"seeds must be non-negative integers, got {', '.join(map(repr, bad))}.")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise CompareError(f"seed(s) given twice: {', '.join(map(str, repeated))}; give each once.")


def _methods(names: list[str]) -> list[Method]:
    if not names:
        raise CompareError("name at least one method to compare, e.g. rvq compare ste rotation (rvq estimators "
                           "lists the estimators; rotation:simvq or fsq name a codebook variant or FSQ).")
    problems = []
    for name in names:
        try:
            parse_method(name)
        except ValueError as err:
            problems.append(str(err))
    if problems:
        raise CompareError("; ".join(problems) + ".")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise CompareError(f"method(s) named twice: {', '.join(repeated)}; name each once.")
    return [parse_method(n) for n in names]


class _Lock:
    """OUT/<estimator>/.compare.lock while a process trains that run (stale locks are taken over)."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / ".compare.lock"

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    pid = int(self.path.read_text().strip() or 0)
                except (OSError, ValueError):
                    pid = 0
                if pid and _alive(pid):
                    raise CompareError(f"{self.path.parent} is being trained by process {pid}. Wait for it (a "
                                       "later rvq compare reuses the finished run), or compare into another "
                                       f"{option('out')}.") from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            return self
        raise CompareError(f"could not lock {self.path}; remove it if no rvq compare is running.")

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _history(run_dir: Path) -> list[dict]:
    path = run_dir / METRICS
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    by_step = {r["step"]: r for r in rows}  # a resumed run may log a step twice: keep the last
    return [by_step[s] for s in sorted(by_step)]


def _train_summary(history: list[dict], steps: int, images_per_step: int) -> dict:
    """Training metrics over the logs of the last tenth of the steps (at least the last log);
    steps/s from the trainer's throughput windows, the first (warm-up) one left out."""
    if not history:
        return {}
    window = [r for r in history if r["step"] > steps * (1 - TRAIN_WINDOW)] or history[-1:]
    out = {}
    for key in ("usage", "rec_loss", "quant_error", "latent_power", "perplexity", "grad_cos", "obtuse", "loss"):
        vals = [r[key] for r in window if key in r]
        if vals:
            out[key] = sum(vals) / len(vals)
    if out.get("latent_power"):
        out["quant_error_relative"] = out["quant_error"] / out["latent_power"]
    out["fallbacks"] = float(sum(r.get("fallbacks", 0.0) for r in history))
    speeds = [r["images_per_s"] for r in history[1:] if r.get("images_per_s")] or \
        [r["images_per_s"] for r in history if r.get("images_per_s")]
    out["steps_per_s"] = sum(speeds) / len(speeds) / images_per_step if speeds else None
    out["window_steps"] = [window[0]["step"], window[-1]["step"]]
    return out


def _run_status(run_dir: Path, recipe: Recipe) -> tuple[str, Path | None]:
    """("new" | "partial" | "done", latest checkpoint); raises when the run is of another recipe."""
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        return "new", None
    try:
        # output.dir is where the run was: a comparison folder copied or moved elsewhere keeps its runs
        changed = recipe_changes(saved_recipe(ckpt), recipe, RESUMABLE_CHANGES | {"output.dir"})
    except CheckpointError as err:
        raise CompareError(f"{run_dir} holds a damaged run: {err} Use {option('restart')} to train it again, "
                           f"or another {option('out')}.") from None
    if changed:
        raise CompareError(f"{run_dir} holds a run of another recipe: the recipe differs from the one the run was "
                           f"started with ({'; '.join(changed)}). Use {option('restart')} to train it again, or "
                           f"another {option('out')}.")
    step = saved_step(ckpt)
    if step > recipe.train.steps:
        raise CompareError(f"{run_dir} was trained for {step} steps, more than the {recipe.train.steps} asked now. "
                           f"Use {option('restart')} to train it again, or another {option('out')}.")
    return ("done" if step == recipe.train.steps else "partial"), ckpt


def _images_per_step(ckpt: Path, recipe: Recipe) -> int:
    world = read_state(ckpt).get("world_size", 1)
    return recipe.train.batch_size * recipe.train.grad_accum * world


def _unseeded_runs(out: Path) -> list[str]:
    """Estimator folders of ``out`` that are run directories themselves (rvq compare before
    --seeds wrote OUT/<estimator>/ rather than OUT/<estimator>/seed-<S>/)."""
    if not out.is_dir():
        return []
    return sorted(p.name for p in out.iterdir() if p.is_dir() and p.name in ESTIMATORS
                  and ((p / METRICS).is_file() or latest_checkpoint(p) is not None))


def _method_folders(out: Path) -> list[str]:
    """The folders of ``out`` that hold a comparison's runs (``<method>/seed-<S>/``)."""
    if not out.is_dir():
        return []
    return sorted(p.name for p in out.iterdir() if p.is_dir() and any(
        c.is_dir() and c.name.startswith("seed-") and c.name[5:].isdigit() for c in p.iterdir()))


def _restart(out: Path, names: list[str], seeds: list[int] | None) -> None:
    """Remove the comparison's own outputs: the named methods' runs of the given seeds (every
    seed of every method when ``seeds`` is None: the recipe changed) and the report; nothing
    else in OUT."""
    for name in names:
        dirs = [out / method_folder(name)] if seeds is None else [run_dir_of(out, name, s) for s in seeds]
        for d in dirs:
            if d.is_dir():
                shutil.rmtree(d)
    for f in REPORT_FILES + ("compare-job.json",):
        p = out / f
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def compare(estimators: list[str], recipe_path: str | os.PathLike, overrides: list[str] = (), *,
            seeds: int | list[int] | None = None, out: str | os.PathLike | None = None, restart: bool = False,
            inception_weights: str | os.PathLike | None = None, fid: bool = True, quiet: bool = False,
            say: Callable[[str], None] = print, lpips: bool = True) -> CompareResult:
    """Train ``recipe_path`` (with ``overrides``) once per method and seed into ``out``, evaluate
    each run on the recipe's validation set, and write compare.json, compare.md and the figures.
    ``estimators``: method names (:mod:`.methods`: ``rotation``, ``rotation:simvq``, ``fsq``).
    ``seeds``: a list, or a count N for the recipe's seed S and S+1..S+N−1 (default: S)."""
    from . import report

    estimators = list(estimators)
    methods = _methods(estimators)
    try:
        base = load_recipe(recipe_path, list(overrides))
    except RecipeError as err:
        raise CompareError(str(err)) from None
    if seeds is None or isinstance(seeds, int) and not isinstance(seeds, bool):
        count = 1 if seeds is None else seeds
        if count < 1:
            raise CompareError(f"the number of seeds must be at least 1, got {count}.")
        seeds = list(range(base.train.seed, base.train.seed + count))
    seeds = list(seeds)
    _check_seeds(seeds)
    if base.data.val is None:
        raise CompareError(f"{recipe_path} has no validation set (data.val is null); rvq compare evaluates every run "
                           "on it. Set data.val=SHARDS (or demo).")
    out = Path(out) if out is not None else Path("runs") / f"compare-{Path(recipe_path).stem}"
    job, defaults = _job(base), flat_recipe(Recipe())  # a comparison from before a key existed ran its default
    record = out / "compare-job.json"
    old_runs = _unseeded_runs(out)
    if old_runs and not restart:
        raise CompareError(f"{out} holds runs made before rvq compare kept one folder per seed "
                           f"({', '.join(f'{n}/' for n in old_runs)} instead of <estimator>/seed-<S>/), which it "
                           f"cannot reuse. Use {option('restart')} to retrain there (removes those runs and the "
                           f"report), or another {option('out')}.")
    for name in old_runs:  # --restart
        shutil.rmtree(out / name)
    if restart and out.is_dir():
        same = job_differences(record, job, defaults) in (None, [])
        _restart(out, estimators if same else _method_folders(out), seeds if same else None)
    diffs = job_differences(record, job, defaults)
    if diffs:
        shown = "; ".join(diffs[:8]) + (f"; and {len(diffs) - 8} more" if len(diffs) > 8 else "")
        raise CompareError(f"{out} holds a comparison of another recipe ({shown}). Use {option('restart')} to "
                           f"start over there (removes its runs and report), or another {option('out')}.")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(record, job)

    stats = _reference_stats(out, base, inception_weights, fid, quiet, say)
    runs: list[EstimatorRun] = []
    notes: list[str] = [n for m in methods for n in m.notes(base)]
    total = len(seeds) * len(methods)
    for seed in seeds:
        reference = _Reference(base, seed)
        for method in methods:
            label = f"[{len(runs) + 1}/{total}] {method.name}" + (f", seed {seed}" if len(seeds) > 1 else "")
            run, eval_notes = _train_and_evaluate(method, reference, recipe_path, overrides, out, label,
                                                  (inception_weights, fid, lpips, stats), quiet, say)
            for note in eval_notes:
                if note not in notes:
                    notes.append(note)
            runs.append(run)
    notes += _start_notes(runs, seeds)
    summary, differences = seed_statistics(runs, estimators, seeds)
    notes += missing_values(runs, estimators, seeds)
    best = best_values(runs, estimators, seeds)
    if len(seeds) == 1 and len(estimators) > 1:
        notes.append(f"one seed: no interval, so no value is marked best; rerun with {option('seeds')} 3 (seeds "
                     f"{seeds[0]}..{seeds[0] + 2}) to see which differences exceed the seed-to-seed spread.")
    figures = report.write_figures(out / "figures", runs, _grid_images(base), say=say)
    result = CompareResult(out, base, estimators, seeds, runs, summary, differences, best,
                           out / "compare.json", out / "compare.md", figures, notes)
    result.tables = report.console_tables(result, recipe_path)
    write_json_atomic(result.json_path, to_json(result, recipe_path, overrides))
    report.write_markdown(result, recipe_path, overrides)
    return result


class _Reference:
    """The shared weights (rvq_cli.training.start) that every run of one seed starts from: those the
    comparison's recipe builds with that seed. Built when a run first needs them."""

    def __init__(self, base: Recipe, seed: int):
        self.recipe = base.model_copy(deep=True)
        self.recipe.train.seed = self.seed = seed
        self._weights = None

    @property
    def weights(self) -> dict:
        if self._weights is None:
            self._weights = reference_weights(self.recipe)
        return self._weights


def _start_notes(runs: list[EstimatorRun], seeds: list[int]) -> list[str]:
    """What the runs' recorded starting weights say: the shared part must agree within a seed;
    quantizers that draw differently (a SimVQ map, FSQ) start from their own weights."""
    notes = []
    for seed in seeds:
        mine = [r for r in runs if r.seed == seed]
        if len({r.shared_fingerprint for r in mine}) > 1:  # cannot happen unless a run was trained elsewhere
            notes.append(f"seed {seed}: the runs did not start from the same encoder and decoder weights: " +
                         ", ".join(f"{r.name} {r.shared_fingerprint}" for r in mine))
        groups = {}
        for r in mine:
            groups.setdefault(r.init_fingerprint, []).append(r.name)
        if len(groups) > 1:
            notes.append(f"seed {seed}: the quantizers start from different states in " +
                         " | ".join(", ".join(g) for g in groups.values()) +
                         " (their parameterisations hold different weights and buffers); the encoder and "
                         "decoder start alike.")
    return notes


def _train_and_evaluate(method: Method, reference: _Reference, recipe_path, overrides, out: Path, label: str,
                        metrics: tuple, quiet: bool, say: Callable[[str], None]) -> tuple[EstimatorRun, list[str]]:
    """One run of the comparison, trained (or resumed, or reused) and evaluated under its lock;
    with the evaluation's notes. ``metrics``: (inception_weights, fid, lpips, reference_stats) as rvq
    eval takes them."""
    from ..data import DataError
    from ..evaluation import EvalError, evaluate
    from ..evaluation.fidelity import FidelityError
    from ..training import TrainingError, train

    name, seed, base = method.name, reference.seed, reference.recipe
    run_dir = run_dir_of(out, name, seed)
    try:
        recipe = load_recipe(recipe_path, list(overrides) + method.overrides(base) +
                             [f"train.seed={seed}", f"output.dir={run_dir}"])
    except RecipeError as err:
        raise CompareError(f"{name}: {err}") from None
    with _Lock(run_dir):
        status, ckpt = _run_status(run_dir, recipe)
        try:
            if status != "done":
                done_label = "resumed" if ckpt is not None else "trained"
                say(f"{label}: {'resuming' if ckpt else 'training'} {recipe.train.steps} steps into {run_dir}")
                train(recipe, run_dir, resume=ckpt is not None, quiet=quiet,
                      start_from=None if ckpt is not None else reference.weights)
                done, ckpt = _run_status(run_dir, recipe)
                if done != "done":  # interrupted (Ctrl-C): the checkpoint is saved
                    raise CompareError(f"{name} (seed {seed}) stopped at {ckpt}; run the same rvq compare again "
                                       "to continue.")
                status = done_label
            else:
                status = "reused"
            eval_path = run_dir / EVAL_FILE
            report_ = json.loads(eval_path.read_text()) if eval_path.is_file() else None
            if _stale(report_, recipe.train.steps, *metrics[:3]):
                say(f"{label}: evaluating on {base.data.val}")
                report_ = evaluate(run_dir, inception_weights=metrics[0], fid=metrics[1], lpips=metrics[2],
                                   reference_stats=metrics[3], out=eval_path, quiet=quiet).report
        except (TrainingError, DataError, CheckpointError, EvalError, FidelityError) as err:
            raise CompareError(f"{name} (seed {seed}): {err}") from None
    history = _history(run_dir)
    state = read_state(ckpt)
    fingerprints = (state.get("init_fingerprint"), state.get("shared_fingerprint"))
    if None in fingerprints:  # saved before runs recorded them
        fingerprints = init_fingerprints(recipe, reference.weights)
    return EstimatorRun(
        name=name, seed=seed, run_dir=run_dir, status=status,
        train=_train_summary(history, recipe.train.steps, _images_per_step(ckpt, recipe)),
        eval=report_["metrics"], init_fingerprint=fingerprints[0], shared_fingerprint=fingerprints[1],
        history=history, code_counts=report_.get("code_counts", []),
    ), report_.get("notes", [])


def _reference_stats(out: Path, base: Recipe, inception_weights, fid: bool, quiet: bool,
                     say: Callable[[str], None]) -> Path | None:
    """OUT/reference-stats.npz: the FID statistics of the validation originals, made once for
    every run's evaluation (image tokenizers with the Inception weights found; else None)."""
    from ..data import count_samples, expand_pattern, resolve_data
    from ..evaluation import fidelity, reference

    weights = fidelity.find_inception_weights(inception_weights) if fid and not base.model.video else None
    if weights is None:
        return None
    path, pattern = out / REFERENCE_STATS, resolve_data(base.data.val, split="val")
    wanted = dict(reference.view_settings(base.data.image_size, base.data.crop, weights), data=str(pattern))
    if path.is_file():
        try:
            stats = reference.read_stats(path)
            reference.check_stats(stats, wanted)
            if stats.settings.get("data") == wanted["data"] and stats.n == count_samples(expand_pattern(pattern)):
                return path
        except reference.StatsError:
            pass  # made otherwise: made again below
    say(f"FID reference statistics of {base.data.val} (once, for every run) into {path}")
    try:
        reference.compute_stats(str(pattern), path, image_size=base.data.image_size, crop=base.data.crop,
                                batch_size=base.train.batch_size, num_workers=base.data.num_workers,
                                inception_weights=weights, quiet=quiet)
    except reference.StatsError as err:
        raise CompareError(str(err)) from None
    return path


def _stale(report: dict | None, steps: int, inception_weights, fid: bool, lpips: bool) -> bool:
    """Whether a run's compare-eval.json must be made again: missing, of another step, from an rvq
    without SSIM, or without a metric asked for whose weights are now found."""
    if report is None or report.get("step") != steps or "ssim" not in report["metrics"]:
        return True
    m = report["metrics"]
    if fid and m.get("rfid") is None and _has_inception(inception_weights):
        return True
    if lpips:
        from ..losses.perceptual import find_trunk_weights

        try:
            return any(m.get(f"lpips_{net}") is None and find_trunk_weights(net) is not None for net in ("alex", "vgg"))
        except RvqError:  # a weights path that is set but missing: rvq eval says so
            return True
    return False


def _has_inception(path) -> bool:
    from ..evaluation import fidelity

    return fidelity.find_inception_weights(path) is not None


def _grid_images(recipe: Recipe) -> torch.Tensor:
    """The first GRID_IMAGES validation images (video: the first 2 clips), centre-cropped as rvq
    eval sees them."""
    from ..data.loader import batch_tensor, build_loader, data_patterns

    _, val = data_patterns(recipe)
    for batch in build_loader(val, recipe, train=False, num_workers=0):
        x = batch_tensor(batch)
        return x[:2] if x.dim() == 5 else x[:GRID_IMAGES]
    return torch.zeros(0, recipe.model.in_channels, recipe.data.image_size, recipe.data.image_size)
