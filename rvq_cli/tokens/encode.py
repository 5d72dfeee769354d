"""``rvq encode``: a dataset -> token shards for a stage-2 model.

Unit i of the source (see ``source.py``) becomes ``OUT/tokens-IIIIII-JJJJJJ.tar`` (J: parts of at
most ``per_shard`` samples), written atomically, then a record ``OUT/.units/unit-IIIIII.json``
(its shards, count, skipped samples). A re-run skips units with a record, so an interrupted run
continues where it stopped and never writes a sample twice; ``restart=True`` discards the
records and token shards first. ``OUT/.units/job.json`` pins the tokenizer and settings: a
re-run with different ones is refused rather than mixing tokens of two tokenizers. When every
unit is done the main process writes ``manifest.json`` and ``skipped.txt``.

Under several processes (``torchrun ... -m rvq_cli encode``) process r takes the pending
units r, r+W, ...: disjoint shards, no coordination beyond two barriers.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

from ..data.format import count_samples, write_shards
from ..errors import RvqError, option
from ..files import write_json_atomic
from ..inference import InferenceSettings, check_precision, inference_accelerator, inference_settings
from ..jobs import clear_outputs, job_differences
from ..progress import JobProgress
from ..runs import LoadedTokenizer, load_tokenizer
from .format import FORMAT, MANIFEST, META, TOKENS, token_dtype, tokens_to_npy
from .source import Source, Unit, plan_source, unit_batches

UNITS = ".units"
_OURS = re.compile(r"tokens-\d{6,}-\d{6,}\.tar")


class EncodeError(RvqError):
    """An encode job that cannot run as asked; the message says why and what to do."""


@dataclass
class EncodeReport:
    out: Path
    manifest: dict
    encoded_now: int  # samples encoded by this run (0 when everything was already done)
    seconds: float
    images_per_s: float
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _clip(tok: LoadedTokenizer) -> tuple[int, int] | None:
    """(frames, stride) of a video tokenizer's clips (its recipe's), None for images."""
    d = tok.recipe.data
    return (d.frames, d.frame_stride) if tok.recipe.model.video else None


def _grid_input(tok: LoadedTokenizer, size: int):
    clip = _clip(tok)
    return (clip[0], size, size) if clip else size


def _job(tok: LoadedTokenizer, src: Source, size: int, per_shard: int, settings: InferenceSettings) -> dict:
    # the precision is part of the job: bf16 and fp32 encoders may choose other codes at near ties
    job = {"format": FORMAT, "tokenizer": tok.tokenizer_id, "source": src.description, "image_size": size,
           "per_shard": per_shard, "units": len(src.units), "precision": settings.precision.value}
    if _clip(tok):
        job["clip"] = list(_clip(tok))
    return job


def _ours(name: str) -> bool:
    return bool(_OURS.fullmatch(name)) or name in (MANIFEST, "skipped.txt")


def _check_job(out: Path, job: dict, restart: bool) -> None:
    """Start, continue, or refuse: ``out`` may only hold the same job's progress."""
    path = out / UNITS / "job.json"
    if restart and out.is_dir():
        clear_outputs(out, out / UNITS, _ours)
    diff = job_differences(path, job)
    if diff:
        raise EncodeError(f"{out} holds tokens of a different encode job ({'; '.join(diff)}). Continue with the "
                          f"same checkpoint and settings, pass {option('restart')} to discard them, or choose another "
                          "OUT.")
    if diff is None and out.is_dir() and any(_OURS.fullmatch(p.name) or p.name == MANIFEST for p in out.iterdir()):
        raise EncodeError(f"{out} already holds token shards without a record of how they were made. Pass "
                          f"{option('restart')} to replace them, or choose another OUT.")
    (out / UNITS).mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, job)


def _record(out: Path, index: int) -> Path:
    return out / UNITS / f"unit-{index:06d}.json"


def _done(out: Path, unit: Unit) -> bool:
    path = _record(out, unit.index)
    if not path.is_file():
        return False
    try:
        rec = json.loads(path.read_text())
    except ValueError:
        return False
    return rec.get("source") == unit.source and all((out / s).is_file() for s in rec.get("shards", []))


class _UnitWriter:
    """Collects one process's token samples per unit and writes a unit when it is complete."""

    def __init__(self, out: Path, tok: LoadedTokenizer, units: dict[int, Unit], per_shard: int):
        self.out, self.tok, self.units, self.per_shard = out, tok, units, per_shard
        self.samples: dict[int, list[dict]] = {}
        self.K = tok.model.quantize.codebook_size

    def add(self, batch: dict, tokens: np.ndarray | None) -> None:
        rows = self.samples.setdefault(batch["unit"], [])
        for i, key in enumerate(batch["key"]):
            meta = {"key": key, "tokenizer": self.tok.tokenizer_id, "grid": list(tokens.shape[1:]),
                    "codebook_size": self.K}
            if batch["cls"][i] is not None:
                meta["cls"] = int(batch["cls"][i])
            if batch["meta"][i]:
                meta["source"] = batch["meta"][i]
            rows.append({"__key__": key, TOKENS: tokens_to_npy(tokens[i], self.K), META: json.dumps(meta).encode()})

    def finish(self, index: int, skipped: list) -> None:
        rows = self.samples.pop(index, [])
        prefix = f"tokens-{index:06d}"
        shards = [p.name for p in write_shards(rows, self.out, prefix=prefix, max_count=self.per_shard)] if rows else []
        write_json_atomic(_record(self.out, index), {"unit": index, "source": self.units[index].source,
                                                "shards": shards, "count": len(rows),
                                                "skipped": [list(s) for s in skipped]})


def _encode_units(acc: Accelerator, tok: LoadedTokenizer, todo: list[Unit], out: Path, size: int, per_shard: int,
                  batch_size: int, num_workers: int, total: int | None, quiet: bool,
                  settings: InferenceSettings) -> tuple[int, float]:
    writer = _UnitWriter(out, tok, {u.index: u for u in todo}, per_shard)
    n = 0
    with JobProgress("encode", total, silent=quiet or not acc.is_main_process) as progress, torch.no_grad():
        for batch in unit_batches(todo, size, batch_size, num_workers, _clip(tok), tok.recipe.data.crop):
            tokens = None
            if batch["x"] is not None:
                with settings.autocast(acc.device):
                    tokens = tok.model.encode(settings.layout(batch["x"].to(acc.device)))
                tokens = tokens.cpu().numpy()  # (B, h, w) or (B, T, h, w)
                writer.add(batch, tokens)
                n += len(tokens)
                progress.advance(len(tokens))
            if batch["end"]:
                writer.finish(batch["unit"], batch["skipped"])
        rate = progress.rate
    return n, rate


def _manifest(out: Path, tok: LoadedTokenizer, src: Source, size: int, per_shard: int,
              settings: InferenceSettings) -> dict:
    shards, count, skipped = [], 0, []
    for unit in src.units:
        rec = json.loads(_record(out, unit.index).read_text())
        shards += rec["shards"]
        count += rec["count"]
        skipped += [tuple(s) for s in rec["skipped"]]
    q = tok.model.quantize
    manifest = {
        "format": FORMAT, "tokenizer": tok.tokenizer_id, "checkpoint": str(tok.checkpoint.resolve()), "step": tok.step,
        "weights": tok.weights, "codebook_size": q.codebook_size, "dtype": token_dtype(q.codebook_size).name,
        "grid": list(tok.model.latent_shape(_grid_input(tok, size))), "image_size": size, "crop": "center",
        "resize": ("short side to image_size" if tok.recipe.data.crop == "random"
                   else "none (centre of the stored image)"),
        **({"clip": {"frames": _clip(tok)[0], "stride": _clip(tok)[1], "from": "every whole clip, frame 0 on"}}
           if _clip(tok) else {}),
        **settings.record(),
        "source": src.description, "per_shard": per_shard, "count": count, "shards": shards,
        "classes": src.classes, "skipped": [list(s) for s in skipped],
    }
    write_json_atomic(out / MANIFEST, manifest)
    (out / "skipped.txt").write_text("".join(f"{k}\t{r}\n" for k, r in skipped))
    return manifest


def encode_dataset(checkpoint: str | os.PathLike, data: str, out: str | os.PathLike, *, per_shard: int = 1000,
                   batch_size: int = 64, num_workers: int = 2, image_size: int | None = None,
                   restart: bool = False, quiet: bool = False, precision: str | None = None,
                   ema: bool | None = None) -> EncodeReport:
    """Encode ``data`` (shard pattern, folder of images, or "demo") with the tokenizer at
    ``checkpoint`` into token shards in ``out``; see the module docstring. ``ema``: as
    :func:`~rvq_cli.runs.load_tokenizer` (None: the weight EMA where the checkpoint has one)."""
    for name, v, lo in (("per_shard", per_shard, 1), ("batch_size", batch_size, 1), ("num_workers", num_workers, 0),
                        ("image_size", 1 if image_size is None else image_size, 1)):
        if v < lo:
            raise EncodeError(f"{option(name)} must be at least {lo}, got {v}.")
    acc = inference_accelerator()
    check_precision(precision)
    tok = load_tokenizer(checkpoint, device=acc.device, ema=ema)
    settings = inference_settings(tok, acc.device, precision)
    size = tok.recipe.data.image_size if image_size is None else image_size
    try:
        tok.model.latent_shape(_grid_input(tok, size))
    except ValueError as err:
        raise EncodeError(f"{option('image_size')} {size}: {err}.") from None
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise EncodeError(f"{out} is a file; OUT must be a folder (it is created if missing).")
    with acc.main_process_first():  # the demo set is built once; the job record is checked once
        src = plan_source(data, per_shard, video=tok.recipe.model.video)
        if acc.is_main_process:
            _check_job(out, _job(tok, src, size, per_shard, settings), restart)
    todo = [u for u in src.units if not _done(out, u)]
    acc.wait_for_everyone()  # every process has listed the pending units before any is written
    mine = todo[acc.process_index :: acc.num_processes]
    total = sum(len(u.files) for u in mine) if src.total else count_samples([u.source for u in mine])
    t0 = time.perf_counter()
    n, rate = _encode_units(acc, tok, mine, out, size, per_shard, batch_size, num_workers, total or None, quiet,
                            settings)
    acc.wait_for_everyone()
    manifest = _manifest(out, tok, src, size, per_shard, settings) if acc.is_main_process else {}
    acc.wait_for_everyone()
    return EncodeReport(out, manifest, n, time.perf_counter() - t0, rate,
                        [tuple(s) for s in manifest.get("skipped", [])])
