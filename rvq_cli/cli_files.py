"""The ``rvq`` commands that turn files into files: ``rvq import taming`` (another tool's
checkpoint as a run folder) and ``rvq data shards / prepare`` (datasets as webdataset shards).
Registered on the ``rvq`` app by :mod:`rvq_cli.cli`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from .errors import UserError

console = Console()


import_app = typer.Typer(help="Turn other tools' checkpoints into rvq run folders.", no_args_is_help=True)


@import_app.command("taming")
def import_taming(
    checkpoint: Path = typer.Argument(..., help="The VQModel checkpoint: a Lightning .ckpt (last.ckpt, model.ckpt), "
                                      "a torch.save'd state dict, or .safetensors."),
    out: Path = typer.Argument(..., help="The run folder to write (new, or empty)."),
    config: Path = typer.Option(..., "--config", help="The model's config YAML (model.target: a VQModel)."),
) -> None:
    """Import a taming-transformers / latent-diffusion VQGAN (the f16-1024, f16-16384, vq-f4, vq-f8
    releases) as an rvq run folder that rvq eval / encode / decode read and that
    rvq train RECIPE train.init_from=OUT fine-tunes with any estimator."""
    from .taming import import_taming as run_import

    done = run_import(checkpoint, config, out)
    q = done.recipe.model.quantizer
    console.print(f"rvq import taming: {q.codebook_size} codes of dimension {q.dim}, "
                  f"{done.recipe.data.image_size}² images, into {done.checkpoint}", highlight=False, markup=False)
    for note in done.notes:
        console.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)
    console.print(f"evaluate: rvq eval {out} --data SHARDS; fine-tune: rvq train {out / 'recipe.yaml'} "
                  f"train.init_from={out} data.train=SHARDS data.val=SHARDS output.dir=runs/NAME (any estimator: "
                  "model.quantizer.estimator=rotation)", highlight=False, markup=False, soft_wrap=True)


data_app = typer.Typer(help="Prepare datasets as webdataset shards.", no_args_is_help=True)


@data_app.command("shards")
def data_shards(
    src: Path = typer.Argument(..., help="Folder of images; class sub-folders give labels."),
    out: Path = typer.Argument(..., help="Output folder for shard-NNNNNN.tar files."),
    per_shard: int = typer.Option(1000, "--per-shard", help="Samples per shard."),
    workers: int = typer.Option(0, "--workers", help="Reader threads (0: up to 4, by CPU count)."),
) -> None:
    """Turn a folder of images into webdataset shards for data.train / data.val."""
    from .data import folder_to_shards

    if not src.is_dir():
        raise UserError(f"{src} is not a folder. Give a folder of images (optionally in class sub-folders).")
    if per_shard < 1:
        raise UserError(f"--per-shard must be at least 1, got {per_shard}.")
    kwargs = {"workers": workers} if workers > 0 else {}
    try:
        with console.status(f"writing shards from {src} ..."):
            report = folder_to_shards(src, out, max_count=per_shard, **kwargs)
    except ValueError as err:
        raise UserError(str(err)) from None
    labels = f", {len(report.classes)} classes" if report.classes else ", no labels (flat folder)"
    console.print(f"{report.count} images in {len(report.shards)} shard(s){labels}: {report.pattern}", highlight=False,
                  markup=False, soft_wrap=True)
    if report.skipped:
        console.print(f"[yellow]{len(report.skipped)} file(s) skipped[/], listed in {out / 'skipped.txt'}:",
                      highlight=False)
        for item in report.skipped[:10]:
            console.print(f"  {item.path}: {item.reason}", highlight=False, markup=False)
    console.print(f"use it in a recipe as  data.train={report.pattern}", highlight=False, markup=False, soft_wrap=True)


@data_app.command("prepare")
def data_prepare(
    layout: str = typer.Argument(..., help="imagenet | ffhq | celebahq | folder | bair | ucf101 (docs/datasets.md: "
                                 "what to download)."),
    src: Path = typer.Argument(..., help="The unpacked download, e.g. ILSVRC/Data/CLS-LOC, "
                               "ffhq-dataset/images1024x1024, UCF-101."),
    out: Path = typer.Argument(...,
                               help="Output folder for train-NNNNNN.tar, val-NNNNNN.tar, classes.json, skipped.txt."),
    val_labels: Optional[Path] = typer.Option(None, "--val-labels", help="imagenet, flat val/: LOC_val_solution.csv "
                                              "(Kaggle) or ILSVRC2012_validation_ground_truth.txt (devkit, with "
                                              "--synsets)."),
    synsets: Optional[Path] = typer.Option(None, "--synsets",
                                           help="imagenet with the devkit's ground truth: the devkit's data/meta.mat."),
    val_from: Optional[int] = typer.Option(None, "--val-from",
                                           help="ffhq: images numbered N and above are validation (default 60000)."),
    val_fraction: Optional[float] = typer.Option(None, "--val-fraction", help="celebahq: the last fraction by number "
                                                 "is validation (default 0.1); folder: a fraction chosen by path hash "
                                                 "(default 0)."),
    train_list: Optional[Path] = typer.Option(None, "--train-list", help="ffhq, celebahq: file names of the training "
                                              "images, one a line (with --val-list); ucf101: the official "
                                              "trainlist01.txt."),
    val_list: Optional[Path] = typer.Option(None, "--val-list", help="ffhq, celebahq: file names of the validation "
                                            "images, one a line; ucf101: testlist01.txt."),
    size: Optional[int] = typer.Option(None, "--size", help="Store images downscaled to this short side (bicubic, JPEG "
                                       "quality 95; videos: every frame resized to it); default: the original size."),
    per_shard: int = typer.Option(1000, "--per-shard", help="Images (videos) per shard."),
    workers: int = typer.Option(0, "--workers", help="Reader processes (0: up to 4, by CPU count)."),
    restart: bool = typer.Option(False, "--restart",
                                 help="Discard what an earlier prepare wrote in OUT (shards, records) and start over."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Turn ImageNet, FFHQ, CelebA-HQ, a folder, BAIR Robot Pushing or UCF101 into train/val shards
    (videos as mp4; resumable: re-run to continue)."""
    from .data import DatasetOptions, prepare_dataset

    given = dict(val_labels=val_labels, synsets=synsets, val_from=val_from, val_fraction=val_fraction,
                 train_list=train_list, val_list=val_list, size=size, per_shard=per_shard, restart=restart, quiet=quiet)
    report = prepare_dataset(layout, src, out, DatasetOptions(**given, **({"workers": workers} if workers else {})))
    for name, s in report.splits.items():
        now = f"{s.written_now} written now" if s.written_now else "nothing left to write"
        console.print(f"{name}: {s.count} images in {len(s.shards)} shard(s) ({now}): {s.pattern}", highlight=False,
                      markup=False, soft_wrap=True)
    labels = f"{len(report.classes)} classes" if report.classes else "no labels"
    console.print(f"{labels}; classes.json and skipped.txt in {report.out}", highlight=False, markup=False)
    for note in report.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    if report.skipped:
        console.print(f"[yellow]{len(report.skipped)} file(s) skipped[/], listed in {report.out / 'skipped.txt'}:",
                      highlight=False)
        for item in report.skipped[:10]:
            console.print(f"  {item.path}: {item.reason}", highlight=False, markup=False)
    console.print("in a recipe:", highlight=False)
    for name, s in report.splits.items():
        console.print(f"  data.{name}={s.pattern}", highlight=False, markup=False, soft_wrap=True)


@data_app.command("stats")
def data_stats(
    data: str = typer.Argument(..., help="Shards of original images (a brace pattern), or demo."),
    out: Path = typer.Argument(..., help="The statistics file to write (.npz)."),
    image_size: int = typer.Option(..., "--image-size", help="The size the tokenizer is evaluated at."),
    crop: str = typer.Option("random", "--crop", help="The recipe's data.crop: random (eval resizes the short side, "
                             "then takes the centre) or center (the stored image's centre, no resize)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per Inception batch."),
    num_workers: int = typer.Option(2, "--num-workers", help="Data loader worker processes."),
    inception_weights: Optional[Path] = typer.Option(None, "--inception-weights", help="torch-fidelity's Inception "
                                                     "weights (.pth or .safetensors)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Compute the FID reference statistics (Inception mean and covariance) of a set of original
    images once, as rvq eval sees them, for rvq eval --reference-stats."""
    from .evaluation.reference import compute_stats

    stats = compute_stats(data, out, image_size=image_size, crop=crop, batch_size=batch_size,
                          num_workers=num_workers, inception_weights=inception_weights, quiet=quiet)
    console.print(f"{stats.n} images of {stats.settings['data']} at {image_size}² ({stats.settings['resize']}): "
                  f"{out}; use it with rvq eval RUN --reference-stats {out}", highlight=False, markup=False,
                  soft_wrap=True)
