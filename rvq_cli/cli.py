"""The ``rvq`` command: thin Typer commands over the library."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from . import __version__
from .cli_files import data_app, import_app
from .errors import RvqError, UserError, name_options_as_flags

app = typer.Typer(
    name="rvq",
    help="Train, evaluate and use vector-quantized image and video tokenizers, "
    "with a choice of gradient estimator through the quantizer.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


class OptionError(RvqError):
    """A command-line option with a value the command cannot take."""


def _one_of(flag: str, choices, say: str):
    """A Typer callback taking None or one of ``choices()`` (called late: the precisions live beside
    torch); ``say`` ends the message, with ``{choices}`` for their list."""

    def check(value: Optional[str]) -> Optional[str]:
        if value is not None and value not in choices():
            raise OptionError(f"{flag} {value!r}: " + say.format(choices=", ".join(choices())))
        return value

    return check


def _precisions() -> tuple[str, ...]:
    from .hardware import PRECISIONS

    return PRECISIONS


PRECISION_OPTION = typer.Option(None, "--precision", help="Autocast precision: auto, no (fp32), bf16 or fp16 "
                                "(default: the run's train.precision; recorded in the output).",
                                callback=_one_of("--precision", _precisions,
                                                 "choose one of {choices} (default: the run's train.precision)."))
WEIGHTS_OPTION = typer.Option(None, "--weights", help="ema or trained: which weights of a run with a model-weight "
                              "EMA (default: the EMA where the checkpoint has one).",
                              callback=_one_of("--weights", lambda: ("ema", "trained"), "choose ema (the "
                                               "model-weight EMA) or trained (default: the EMA where the "
                                               "checkpoint has one)."))


def _ema(weights: Optional[str]) -> Optional[bool]:
    return None if weights is None else weights == "ema"


def _version(value: bool) -> None:
    if value:
        console.print(f"rvq {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """rvq: vector-quantized tokenizers with selectable gradient estimators."""
    name_options_as_flags(True)  # the library's messages name its parameters as this command's flags
    ctx.call_on_close(lambda: name_options_as_flags(False))


@app.command()
def estimators(
    dim: int = typer.Option(32, "--dim", help="Vector dimension D for the live check."),
    rows: int = typer.Option(4096, "--rows", help="Number of random (e, q) rows for the live check."),
    seed: int = typer.Option(0, "--seed", help="Random seed for the live check."),
) -> None:
    """List every gradient estimator (name, kind, what it does, paper section), then check the
    pointwise ones live on random vectors.

    The live check gives, per pointwise estimator: whether the forward value equals q bit for
    bit, the mean angle error |angle(e, grad_e) - angle(q, g)| (zero for the rotation family,
    §4.1), the mean ratio ‖grad_e‖/‖g‖, and how many rows took the degenerate-row fallback.
    """
    from .quantize import ESTIMATORS
    from .quantize.parameterisations import QUANTIZER_VARIANTS
    from .quantize.report import check_estimators

    if dim < 1 or rows < 1:
        raise UserError(f"--dim and --rows must be positive integers, got --dim {dim} --rows {rows}.")
    table = Table(title="gradient estimators (model.quantizer.estimator=NAME)")
    for col in ("name", "kind", "gradient to e", "description", "paper"):
        table.add_column(col, overflow="fold")
    for est in ESTIMATORS.values():
        table.add_row(est.name, est.kind, est.formula, est.summary, est.section)
    console.print(table)
    variants = Table(title="codebook parameterisations and FSQ (model.quantizer.codebook / model.quantizer.kind)")
    for col in ("setting", "what it is", "paper"):
        variants.add_column(col, overflow="fold")
    for row in QUANTIZER_VARIANTS:
        variants.add_row(*row)
    console.print(variants)
    live = Table(title=f"live check of the pointwise estimators: {rows} random rows, D={dim}, seed {seed}")
    for col in ("estimator", "forward = q", "angle error °", "‖grad‖/‖g‖", "fallbacks"):
        live.add_column(col)
    for row in check_estimators(dim=dim, rows=rows, seed=seed):
        live.add_row(row.name, "yes" if row.forward_exact else "NO", f"{row.angle_error_deg:.1e}",
                     f"{row.norm_ratio:.3f}", str(row.fallbacks))
    console.print(live)
    console.print("λ = ‖q‖/‖e‖, H_q the Hessian of the loss in the decoder input. Loss-level estimators cost a "
                  "double backward (hessian) or a second decoder pass (exact). docs/estimators.md says when to "
                  "use which.", highlight=False)


def _recipe_summary(path: Path) -> str:
    """The first comment line of a recipe: what it reproduces."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
        if line.strip():
            break
    return ""


@app.command()
def recipes() -> None:
    """List the shipped recipes, one line each: every command that takes a recipe takes their names."""
    from .config import shipped_recipes

    shipped = shipped_recipes()
    if not shipped:
        raise UserError("this rvq installation has no recipes (the package data of rvq_cli.recipes is missing); "
                        "reinstall rvq, or pass a recipe file.")
    folder = next(iter(shipped.values())).parent
    table = Table(title=f"shipped recipes (rvq train NAME), in {folder}")
    table.add_column("recipe")
    table.add_column("what it is")
    for name, p in shipped.items():
        table.add_row(name, _recipe_summary(p))
    console.print(table)


@app.command()
def validate(
    recipe: Path = typer.Argument(..., help="Recipe YAML file, or a shipped recipe's name (rvq recipes lists them)."),
    overrides: list[str] = typer.Argument(None, help="key=value overrides, e.g. train.steps=200"),
    show: bool = typer.Option(False, "--show", help="Print the fully resolved recipe."),
) -> None:
    """Check a recipe (and overrides) without running anything; list every problem found."""
    from .config import load_recipe, recipe_to_yaml

    resolved = load_recipe(recipe, overrides or [])
    q, t = resolved.model.quantizer, resolved.train
    fsq = f"FSQ levels {q.levels}, " if q.kind == "fsq" else ""
    console.print(f"[green]{recipe}: valid.[/] model {resolved.model.name}, {fsq}estimator {q.estimator}, "
                  f"{q.codebook_size} codes, {t.steps} steps, batch {t.batch_size} × accumulation {t.grad_accum} "
                  "per process.", highlight=False)
    if show:
        console.print(recipe_to_yaml(resolved), highlight=False, markup=False)


@app.command()
def train(
    recipe: Path = typer.Argument(..., help="Recipe YAML file, or a shipped recipe's name (rvq recipes lists them)."),
    overrides: list[str] = typer.Argument(None, help="key=value overrides, e.g. model.quantizer.estimator=ste"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this run directory."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar: one log line per log interval."),
) -> None:
    """Train a tokenizer: checkpoints, metrics.jsonl and reconstruction grids go to output.dir."""
    from .config import load_recipe
    from .training import train as run_training

    resolved = load_recipe(recipe, overrides or [])
    result = run_training(resolved, run_dir=resume, resume=resume is not None, quiet=quiet)
    if result.interrupted:  # saved and resumable, but not finished: 130 (Ctrl-C) or 143 (SIGTERM)
        raise typer.Exit(result.exit_code)
    console.print(f"done: {result.step} steps; checkpoints, metrics.jsonl and samples/ in {result.run_dir}",
                  highlight=False)


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"
    return str(v)


@app.command("eval")
def eval_(
    checkpoint: Path = typer.Argument(..., help="Run directory (its latest checkpoint) or a ckpt-NNNNNNNN folder."),
    data: Optional[str] = typer.Option(None, "--data",
                                       help="Shards to evaluate on (default: the recipe's set for --split)."),
    split: str = typer.Option("val", "--split",
                              help="Which of the recipe's sets when --data is not given: val or train."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images per batch (default: the recipe's)."),
    num_workers: Optional[int] = typer.Option(None, "--num-workers",
                                              help="Data loader worker processes (default: the recipe's)."),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Evaluate at another resolution than the "
                                             "checkpoint's (recorded in eval.json)."),
    inception_weights: Optional[Path] = typer.Option(None, "--inception-weights", help="torch-fidelity's Inception "
                                                     "weights (.pth or .safetensors) for r-FID/r-IS."),
    no_fid: bool = typer.Option(False, "--no-fid", help="Skip r-FID and r-IS."),
    no_lpips: bool = typer.Option(False, "--no-lpips", help="Skip the LPIPS metrics (AlexNet and VGG16 trunks)."),
    reference_stats: Optional[Path] = typer.Option(None, "--reference-stats", help="FID reference statistics "
                                                   "(rvq data stats) in place of the originals' features."),
    i3d_weights: Optional[Path] = typer.Option(None, "--i3d-weights",
                                               help="Video: I3D weights (VideoGPT's i3d_pretrained_400.pt) for r-FVD."),
    no_fvd: bool = typer.Option(False, "--no-fvd", help="Video: skip r-FVD."),
    precision: Optional[str] = PRECISION_OPTION,
    weights: Optional[str] = WEIGHTS_OPTION,
    out: Optional[Path] = typer.Option(None, "--out", help="Where to write the JSON report (default: "
                                       "RUN_DIR/eval.json; the grid goes beside it as .png)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Measure a tokenizer: reconstruction loss, MSE/L1, PSNR, SSIM, LPIPS, codebook usage,
    perplexity, quantization error, r-FID and r-IS (video: per frame, plus r-FVD); writes
    eval.json and a grid of originals beside reconstructions."""
    from .evaluation import evaluate

    result = evaluate(checkpoint, data=data, split=split, batch_size=batch_size, num_workers=num_workers,
                      image_size=image_size, inception_weights=inception_weights, fid=not no_fid, lpips=not no_lpips,
                      i3d_weights=i3d_weights, fvd=not no_fvd, out=out, quiet=quiet, precision=precision,
                      reference_stats=reference_stats, ema=_ema(weights))
    if result.json_path is None:  # not the main process
        return
    r = result.report
    console.print(f"{r['checkpoint']}: step {r['step']}, estimator {r['estimator']}, {r['codebook_size']} codes; " +
                  (f"{r['data']['images']} clips of {r['data']['frames_per_clip']} frames"
                   if "frames_per_clip" in r["data"] else f"{r['data']['images']} images") +
                  f" at {r['data']['image_size']} px from {r['data']['pattern']}",
                  highlight=False, markup=False, soft_wrap=True)
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in r["metrics"].items():
        table.add_row(k, _fmt(v))
    console.print(table)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    if r["data"]["skipped"]:
        console.print(f"[yellow]{r['data']['skipped']} sample(s) skipped as undecodable.[/]", highlight=False)
    console.print(f"wrote {result.json_path}" + (f" and {result.grid_path}" if result.grid_path else ""),
                  highlight=False, markup=False, soft_wrap=True)


@app.command()
def encode(
    checkpoint: Path = typer.Argument(..., help="Run directory (its latest checkpoint) or a ckpt-NNNNNNNN folder."),
    data: str = typer.Argument(..., help="Image shards (pattern), a folder of images, or 'demo'."),
    out: Path = typer.Argument(..., help="Output folder for tokens-*.tar, manifest.json and skipped.txt."),
    per_shard: int = typer.Option(1000, "--per-shard",
                                  help="Samples per token shard (folder inputs: also per unit of work)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per forward pass."),
    num_workers: int = typer.Option(2, "--num-workers", help="Decoding worker processes (0: decode in this process)."),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Crop size (default: the checkpoint's)."),
    restart: bool = typer.Option(False, "--restart", help="Discard the token shards of an earlier run in OUT first."),
    precision: Optional[str] = PRECISION_OPTION,
    weights: Optional[str] = WEIGHTS_OPTION,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Encode a dataset into token shards for a stage-2 model (resumable: re-run to continue)."""
    from .tokens import encode_dataset

    report = encode_dataset(checkpoint, data, out, per_shard=per_shard, batch_size=batch_size,
                            num_workers=num_workers, image_size=image_size, restart=restart, quiet=quiet,
                            precision=precision, ema=_ema(weights))
    m = report.manifest
    if not m:  # not the main process
        return
    now = (f"{report.encoded_now} encoded now at {report.images_per_s:.1f} images/s" if report.encoded_now
           else "nothing left to encode")
    console.print(f"{m['count']} samples as {m['grid'][0]}×{m['grid'][1]} {m['dtype']} tokens in {len(m['shards'])} "
                  f"shard(s) ({now}): {report.out}", highlight=False, markup=False, soft_wrap=True)
    if report.skipped:
        console.print(f"[yellow]{len(report.skipped)} sample(s) skipped[/], listed in {report.out / 'skipped.txt'}:",
                      highlight=False)
        for key, reason in report.skipped[:10]:
            console.print(f"  {key}: {reason}", highlight=False, markup=False)


@app.command()
def decode(
    checkpoint: Path = typer.Argument(..., help="The run directory or checkpoint that encoded the tokens."),
    tokens: str = typer.Argument(..., help="An rvq encode output folder, or token shards (pattern)."),
    out: Path = typer.Argument(..., help="Output folder for KEY.png images."),
    batch_size: int = typer.Option(32, "--batch-size", help="Token grids per decoder pass."),
    precision: Optional[str] = PRECISION_OPTION,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Decode token shards back to images, named by their source keys, with the weights that
    encoded them (the manifest says which)."""
    from .tokens import decode_dataset

    report = decode_dataset(checkpoint, tokens, out, batch_size=batch_size, quiet=quiet, precision=precision)
    console.print(f"{report.count} images decoded into {report.out}", highlight=False, markup=False, soft_wrap=True)


SYNTHETIC = ("himmelblau", "voronoi", "field")


@app.command()
def compare(
    items: list[str] = typer.Argument(None, help="Methods to compare: estimators (rvq estimators lists them), "
                                      "EST:CODEBOOK for an estimator on the simvq or affine codebook (rotation:simvq), "
                                      "fsq or fsq:8-5-5-5 for FSQ; then any key=value recipe overrides."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="Recipe to train: a YAML file or a shipped "
                                          "recipe's name (default: the shipped quickstart)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Training steps per estimator (default: the recipe's)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of every run (default: the recipe's)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: runs/compare-RECIPE, or "
                                       "runs/synthetic-PROBLEM with --synthetic)."),
    restart: bool = typer.Option(False, "--restart", help="Retrain the named estimators for the seeds asked (and "
                                 "remove the report) instead of reusing finished runs; other seeds are kept."),
    synthetic: Optional[str] = typer.Option(None, "--synthetic", help="Run one of the paper's synthetic problems "
                                            "instead: himmelblau, voronoi or field."),
    seeds: Optional[int] = typer.Option(None, "--seeds", help="Number of seeds: S, S+1, ... from --seed S (default "
                                        "1; --synthetic himmelblau: 10). Over several seeds the report gives mean ± "
                                        "std and seed-paired differences with 95% intervals."),
    inception_weights: Optional[Path] = typer.Option(None, "--inception-weights", help="torch-fidelity's Inception "
                                                     "weights for r-FID/r-IS (see rvq eval)."),
    no_fid: bool = typer.Option(False, "--no-fid", help="Skip r-FID and r-IS."),
    no_lpips: bool = typer.Option(False, "--no-lpips", help="Skip the LPIPS metrics (AlexNet and VGG16 trunks)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars: one log line per log interval."),
) -> None:
    """Train the same recipe once per method and seed (within a seed: the same data order and
    initial encoder and decoder weights), evaluate each on the same validation set, and print a
    table like the paper's Table 1 (mean ± std over seeds, and seed-paired differences to the
    first method with 95% intervals); writes compare.json, compare.md and figures/ (curves with
    the seed spread, diagnostics, usage histograms, reconstructions).
    With --synthetic, run the paper's 2-D problems (seconds on a CPU) instead."""
    items = items or []
    names = [i for i in items if "=" not in i]
    overrides = [i for i in items if "=" in i]
    if synthetic is not None:
        if synthetic not in SYNTHETIC:
            raise UserError(f"--synthetic {synthetic}: unknown problem; choose one of {', '.join(SYNTHETIC)}.")
        given = [flag for flag, v in (("--recipe", recipe), ("--steps", steps), ("--seed", seed),
                                      ("key=value", overrides), ("--inception-weights", inception_weights)) if v]
        if given:
            raise UserError("--synthetic runs the paper's 2-D problems, which take no recipe: drop "
                            f"{', '.join(given)}.")
        if seeds is not None and synthetic != "himmelblau":
            raise UserError(f"--synthetic {synthetic} runs one fixed setting (the paper's figure): drop --seeds, "
                            "which only --synthetic himmelblau takes.")
        _compare_synthetic(names, synthetic, out, 10 if seeds is None else seeds)
        return
    from .compare.runner import compare as run_compare
    from .config import shipped_recipes

    if recipe is None:
        recipe = shipped_recipes().get("quickstart")
        if recipe is None:
            raise UserError("the default recipe, the shipped quickstart, is missing from this installation; "
                            "pass --recipe RECIPE.yaml.")
    for flag, v in (("--steps", steps), ("--seeds", seeds), ("--seed", seed)):
        if v is not None and v < (0 if flag == "--seed" else 1):
            raise UserError(f"{flag} must be {'non-negative' if flag == '--seed' else 'positive'}, got {v}.")
    overrides += [f"train.steps={steps}"] if steps is not None else []
    overrides += [f"train.seed={seed}"] if seed is not None else []
    result = run_compare(names, recipe, overrides, seeds=seeds, out=out, restart=restart,
                         inception_weights=inception_weights, fid=not no_fid, lpips=not no_lpips, quiet=quiet,
                         say=lambda m: console.print(m, highlight=False, markup=False, soft_wrap=True))
    _print_report(result.tables, [f"note: {note}" for note in result.notes],
                  f"report: {result.md_path} and {result.json_path}; figures in {result.out_dir / 'figures'}")


def _rich_table(table) -> Table:
    """A report table (``rvq_cli.compare.tables.Table``) as a rich Table: the first column left,
    the others right; marked cells bold with a star, which the title explains."""
    from rich.markup import escape

    out = Table(title=escape(table.title + (f" (* {table.marks})" if table.marks else "")))
    for i, col in enumerate(table.header):
        out.add_column(escape(col), justify="left" if i == 0 else "right", no_wrap=i == 0)  # labels whole
    for row in table.rows:
        out.add_row(*(f"[bold green]{escape(c.text)}*[/]" if c.mark else escape(c.text) for c in row))
    return out


def _print_report(tables, lines: list[str], footer: str) -> None:
    """A comparison's tables (recipe or synthetic alike), then its lines of text and where the
    report is."""
    # a log file or pipe gets the whole table, not one cut to 80 columns
    wide = console if console.is_terminal else Console(width=max(console.width, 200))
    for table in tables:
        wide.print(_rich_table(table))
    for line in lines + [footer]:
        console.print(line, highlight=False, markup=False, soft_wrap=True)


def _compare_synthetic(names: list[str], problem: str, out: Optional[Path], seeds: int) -> None:
    from .compare.synthetic_report import run_synthetic

    result = run_synthetic(problem, names, out=out or Path("runs") / f"synthetic-{problem}", seeds=seeds)
    _print_report(result.tables, result.lines, f"report: {result.json_path}; figure: {result.figure}")


app.add_typer(import_app, name="import")
app.add_typer(data_app, name="data")


def main() -> None:
    """Console entry point: run the app, turning user errors into a clean message."""
    try:
        app()
    except RvqError as err:  # every error a user can fix (rvq_cli.errors), one paragraph, no traceback
        # user text may hold brackets ([1, 2]); never let rich read it as markup
        err_console.print(Text.assemble(("error: ", "bold red"), str(err)), highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
