"""``rvq compare``: one recipe trained once per estimator, the estimator the only difference,
then every run evaluated on the same validation set and put side by side (the paper's Table 1).

Layout of the output folder::

    OUT/compare-job.json          the recipe the comparison is of (pins what may continue here)
    OUT/<estimator>/              an ordinary run directory (checkpoints, metrics.jsonl), plus
                                  compare-eval.json: rvq eval on the recipe's validation set
    OUT/compare.json, compare.md  the results; OUT/figures/*.png the visual report

Every run starts from the same seed, so the same initial weights (checked: the fingerprint of
the initial parameters is recorded per run) and the same data order (the shard streams have
their own seeded generators). A run that reached the recipe's step count and has its
``compare-eval.json`` is reused (never a plain ``eval.json``, which ``rvq eval`` may have
written on other data), a run with an earlier checkpoint resumes, so an interrupted comparison
continues where it stopped. Separate processes may each train one estimator into the same
OUT (each run directory is locked while trained); a last ``rvq compare`` naming them all then
only evaluates what is missing and writes the report.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..config import Recipe, RecipeError, load_recipe
from ..jobs import job_differences, write_json_atomic
from ..quantize import ESTIMATORS

__all__ = ["COLUMNS", "CompareError", "CompareResult", "EstimatorRun", "compare", "init_fingerprint"]

TRAIN_WINDOW = 0.1  # training metrics: the mean over the logs of the last tenth of the steps
GRID_IMAGES = 8
EVAL_FILE = "compare-eval.json"  # the comparison's own evaluation of each run (beside compare-eval.png)
REPORT_FILES = ("compare.json", "compare.md", "figures")


class CompareError(Exception):
    """A comparison that cannot start or continue; the message says why and what to do."""


@dataclass(frozen=True)
class Column:
    key: str  # "train.usage" or "eval.rfid": section and metric
    label: str
    better: str  # "high" or "low"; "" for no ranking
    fmt: str = "{:.4g}"


# The paper's Table 1, then throughput and the gradient diagnostics.
COLUMNS = (
    Column("train.usage", "usage ↑", "high", "{:.1%}"),
    Column("train.rec_loss", "train rec ↓", "low"),
    Column("train.quant_error", "quant err ↓", "low", "{:.3e}"),
    Column("eval.rec_loss", "val rec ↓", "low"),
    Column("eval.rfid", "r-FID ↓", "low", "{:.2f}"),
    Column("eval.ris", "r-IS ↑", "high", "{:.2f}"),
    Column("train.steps_per_s", "steps/s ↑", "high", "{:.2f}"),
    Column("eval.usage", "val usage ↑", "high", "{:.1%}"),
    Column("eval.quant_error", "val quant err ↓", "low", "{:.3e}"),
    Column("eval.quant_error_relative", "val rel. quant err ↓", "low", "{:.3e}"),
    Column("train.grad_cos", "cos(∇e, g)", "", "{:.3f}"),
    Column("train.obtuse", "obtuse", "", "{:.2%}"),
    Column("train.fallbacks", "fallbacks", "", "{:.0f}"),
)


@dataclass
class EstimatorRun:
    name: str
    run_dir: Path
    status: str  # "trained", "resumed" or "reused"
    train: dict  # training metrics over the last tenth of the run, plus steps_per_s
    eval: dict  # eval.json's metrics
    init_fingerprint: str
    history: list[dict] = field(repr=False, default_factory=list)  # metrics.jsonl
    code_counts: list[int] = field(repr=False, default_factory=list)  # per code, over the validation set

    def value(self, key: str):
        section, metric = key.split(".", 1)
        return getattr(self, section).get(metric)


@dataclass
class CompareResult:
    out_dir: Path
    recipe: Recipe
    runs: list[EstimatorRun]
    best: dict[str, list[str]]  # column key -> estimators with the best value
    json_path: Path
    md_path: Path
    figures: dict[str, Path]
    notes: list[str]


def init_fingerprint(recipe: Recipe) -> str:
    """SHA-256 (16 hex digits) of the initial parameters and buffers a run of ``recipe`` starts
    from: the trainer seeds, then builds the model, exactly as here."""
    from accelerate.utils import set_seed

    from ..train.build import build_tokenizer

    set_seed(recipe.train.seed)
    model = build_tokenizer(recipe.model, recipe.data.image_size, recipe.data.frames)
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def _job(recipe: Recipe) -> dict:
    """What every run of the comparison shares, as dotted keys: the recipe without the estimator,
    the output dir and the step count (a comparison may be extended to more steps: every run
    then resumes to the new count)."""
    from ..train.trainer import _flatten

    flat = _flatten(recipe.model_dump(mode="json"))
    for key in ("model.quantizer.estimator", "output.dir", "train.steps"):
        flat.pop(key)
    return flat


def _check_estimators(names: list[str]) -> None:
    if not names:
        raise CompareError("name at least one estimator to compare, e.g. rvq compare ste rotation "
                           f"(valid: {', '.join(ESTIMATORS)}).")
    unknown = [n for n in names if n not in ESTIMATORS]
    if unknown:
        raise CompareError(f"unknown estimator(s) {', '.join(unknown)}; valid: {', '.join(ESTIMATORS)} "
                           "(rvq estimators describes each).")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise CompareError(f"estimator(s) named twice: {', '.join(repeated)}; name each once.")


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
                                       "later rvq compare reuses the finished run), or compare into another --out.")
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
    path = run_dir / "metrics.jsonl"
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
    from ..train.checkpoint import latest_checkpoint
    from ..train.trainer import TrainingError, _check_resume_recipe

    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        return "new", None
    try:
        _check_resume_recipe(load_recipe(ckpt / "recipe.yaml", check_paths=False), recipe)
    except (TrainingError, RecipeError) as err:
        raise CompareError(f"{run_dir} holds a run of another recipe: {err} Use --restart to train it again, "
                           "or another --out.") from None
    step = json.loads((ckpt / "state.json").read_text())["step"]
    if step > recipe.train.steps:
        raise CompareError(f"{run_dir} was trained for {step} steps, more than the {recipe.train.steps} asked now. "
                           "Use --restart to train it again, or another --out.")
    return ("done" if step == recipe.train.steps else "partial"), ckpt


def _images_per_step(ckpt: Path, recipe: Recipe) -> int:
    world = json.loads((ckpt / "state.json").read_text()).get("world_size", 1)
    return recipe.train.batch_size * recipe.train.grad_accum * world


def _restart(out: Path, names: list[str]) -> None:
    """Remove the comparison's own outputs: the named runs (and every run when the recipe changed)
    and the report; nothing else in OUT."""
    for name in names:
        d = out / name
        if d.is_dir():
            shutil.rmtree(d)
    for f in REPORT_FILES + ("compare-job.json",):
        p = out / f
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def compare(estimators: list[str], recipe_path: str | os.PathLike, overrides: list[str] = (), *,
            out: str | os.PathLike | None = None, restart: bool = False,
            inception_weights: str | os.PathLike | None = None, fid: bool = True, quiet: bool = False,
            say: Callable[[str], None] = print) -> CompareResult:
    """Train ``recipe_path`` (with ``overrides``) once per estimator into ``out``, evaluate each
    run on the recipe's validation set, and write compare.json, compare.md and the figures."""
    from ..data import DataError
    from ..evaluate import CheckpointError, EvalError, evaluate
    from ..evaluate.fidelity import FidelityError
    from ..train import TrainingError, train
    from . import report

    estimators = list(estimators)
    _check_estimators(estimators)
    try:
        base = load_recipe(recipe_path, list(overrides))
    except RecipeError as err:
        raise CompareError(str(err)) from None
    if base.data.val is None:
        raise CompareError(f"{recipe_path} has no validation set (data.val is null); rvq compare evaluates every run "
                           "on it. Set data.val=SHARDS (or demo).")
    out = Path(out) if out is not None else Path("runs") / f"compare-{Path(recipe_path).stem}"
    job = _job(base)
    record = out / "compare-job.json"
    if restart and out.is_dir():
        _restart(out, estimators if job_differences(record, job) in (None, []) else list(ESTIMATORS))
    diffs = job_differences(record, job)
    if diffs:
        shown = "; ".join(diffs[:8]) + (f"; and {len(diffs) - 8} more" if len(diffs) > 8 else "")
        raise CompareError(f"{out} holds a comparison of another recipe ({shown}). Use --restart to start over "
                           "there (removes its runs and report), or another --out.")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(record, job)

    runs: list[EstimatorRun] = []
    notes: list[str] = []
    for i, name in enumerate(estimators, 1):
        run_dir = out / name
        try:
            recipe = load_recipe(recipe_path, list(overrides) + [f"model.quantizer.estimator={name}",
                                                                  f"output.dir={run_dir}"])
        except RecipeError as err:
            raise CompareError(f"{name}: {err}") from None
        fingerprint = init_fingerprint(recipe)
        with _Lock(run_dir):
            status, ckpt = _run_status(run_dir, recipe)
            try:
                if status != "done":
                    label = "resumed" if ckpt is not None else "trained"
                    say(f"[{i}/{len(estimators)}] {name}: {'resuming' if ckpt else 'training'} "
                        f"{recipe.train.steps} steps into {run_dir}")
                    train(recipe, run_dir, resume=ckpt is not None, quiet=quiet)
                    done, ckpt = _run_status(run_dir, recipe)
                    if done != "done":  # interrupted (Ctrl-C): the checkpoint is saved
                        raise CompareError(f"{name} stopped at {ckpt}; run the same rvq compare again to continue.")
                    status = label
                else:
                    status = "reused"
                eval_path = run_dir / EVAL_FILE
                report_ = json.loads(eval_path.read_text()) if eval_path.is_file() else None
                if report_ is None or report_.get("step") != recipe.train.steps or \
                        (fid and report_["metrics"].get("rfid") is None and _has_inception(inception_weights)):
                    say(f"[{i}/{len(estimators)}] {name}: evaluating on {base.data.val}")
                    report_ = evaluate(run_dir, inception_weights=inception_weights, fid=fid, out=eval_path,
                                       quiet=quiet).report
            except (TrainingError, DataError, CheckpointError, EvalError, FidelityError) as err:
                raise CompareError(f"{name}: {err}") from None
        for note in report_.get("notes", []):
            if note not in notes:
                notes.append(note)
        history = _history(run_dir)
        runs.append(EstimatorRun(
            name=name, run_dir=run_dir, status=status,
            train=_train_summary(history, recipe.train.steps, _images_per_step(ckpt, recipe)),
            eval=report_["metrics"], init_fingerprint=fingerprint, history=history,
            code_counts=report_.get("code_counts", []),
        ))

    if len({r.init_fingerprint for r in runs}) > 1:  # cannot happen unless model building depends on the estimator
        notes.append("the runs did not start from identical weights: " +
                     ", ".join(f"{r.name} {r.init_fingerprint}" for r in runs))
    best = best_values(runs)
    figures = report.write_figures(out / "figures", runs, _grid_images(base), say=say)
    result = CompareResult(out, base, runs, best, out / "compare.json", out / "compare.md", figures, notes)
    write_json_atomic(result.json_path, to_json(result, recipe_path, overrides))
    report.write_markdown(result, recipe_path, overrides)
    return result


def _has_inception(path) -> bool:
    from ..evaluate import fidelity

    return fidelity.find_inception_weights(path) is not None


def best_values(runs: list[EstimatorRun]) -> dict[str, list[str]]:
    """Per ranked column, the estimators with the best value (ties share it); none with one run."""
    best: dict[str, list[str]] = {}
    if len(runs) < 2:
        return best
    for col in COLUMNS:
        vals = [(r.name, r.value(col.key)) for r in runs if r.value(col.key) is not None]
        if not col.better or len(vals) < 2:
            continue
        top = (max if col.better == "high" else min)(v for _, v in vals)
        best[col.key] = [n for n, v in vals if v == top]
    return best


def _grid_images(recipe: Recipe) -> torch.Tensor:
    """The first GRID_IMAGES validation images (video: the first 2 clips), centre-cropped as rvq
    eval sees them."""
    from ..train.trainer import _data_patterns, _loader, batch_tensor

    _, val = _data_patterns(recipe)
    here = recipe.model_copy(update={"data": recipe.data.model_copy(update={"num_workers": 0})})
    for batch in _loader(val, here, train=False):
        x = batch_tensor(batch)
        return x[:2] if x.dim() == 5 else x[:GRID_IMAGES]
    return torch.zeros(0, recipe.model.in_channels, recipe.data.image_size, recipe.data.image_size)


def to_json(result: CompareResult, recipe_path, overrides) -> dict:
    return {
        "recipe": str(recipe_path), "overrides": list(overrides), "steps": result.recipe.train.steps,
        "seed": result.recipe.train.seed, "validation": result.recipe.data.val,
        "train_window": f"mean over the logs of the last {TRAIN_WINDOW:.0%} of the steps",
        "columns": [{"key": c.key, "label": c.label, "better": c.better} for c in COLUMNS],
        "runs": [{"estimator": r.name, "run_dir": str(r.run_dir), "status": r.status,
                  "init_fingerprint": r.init_fingerprint, "train": r.train, "eval": r.eval} for r in result.runs],
        "best": result.best,
        "figures": {k: str(v) for k, v in result.figures.items()},
        "notes": result.notes,
        "written": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
