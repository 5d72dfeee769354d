"""Datasets as users download them -> train/validation shards (what ``rvq data prepare`` runs).

Layouts (docs/datasets.md says what to download for each):

- ``imagenet``: ``SRC/train/<synset>/*.JPEG`` and ``SRC/val/``, either in synset folders
  (valprep.sh) or flat ``ILSVRC2012_val_NNNNNNNN.JPEG`` with ``val_labels``: Kaggle's
  LOC_val_solution.csv, or the devkit's ILSVRC2012_validation_ground_truth.txt plus ``synsets``
  (the devkit's meta.mat, or a text file of synsets in ILSVRC2012_ID order). Labels are 0..C-1 in
  sorted synset order of train/ (torchvision's ImageFolder), for both splits.
- ``ffhq``: images named by index (``00000/00000.png`` ... or flat); index ≥ ``val_from``
  (60000) is validation, or taming-style ``train_list`` / ``val_list``. Unlabelled.
- ``celebahq``: images named by index (``00000.jpg``, ``0.jpg``, ``imgHQ00000.png``); the last
  ``val_fraction`` (0.1) by index is validation, or ``train_list`` / ``val_list``. Unlabelled.
- ``folder``: any folder, class sub-folders give labels (as ``rvq data shards``); a file is
  validation when a hash of its relative path falls below ``val_fraction`` (default 0).
- ``bair``, ``ucf101``: videos, one mp4 sample per trajectory / video (``video_datasets.py``).

Split S is written as ``OUT/S-000000.tar``, ... with ``per_shard`` files each: validation in sorted
order, training in a fixed pseudo-random order of the sorted list (``shuffled_order``: shards of
sorted synset or class folders would make every batch nearly one class), keys from the path (``_keys``; ffhq/celebahq keys start with the layout name so the two
never clash in FacesHQ). Each shard is written to a hidden ``.partial`` file and renamed when
complete, then recorded in ``OUT/.progress/S-NNNNNN.json`` (its files, a digest of what it holds,
its size, skipped files). A re-run skips recorded shards, so an interrupted run continues where
it stopped; ``OUT/.progress/job.json`` pins source and settings, and other ones are refused
unless ``restart``. Corrupt files are skipped and listed in ``OUT/skipped.txt``.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

from ..jobs import clear_outputs, job_differences
from ..progress import JobProgress
from .images import _resize_short, decode_rgb
from ..files import write_json_atomic, write_text_atomic
from .prepare import IMAGE_SUFFIXES, SkippedFile, _class_layout, _keys, _list_images, _load
from .shards import DataError, _checked, _shard_name, _write_one, shard_pattern, shuffled_order

LAYOUTS = ("imagenet", "ffhq", "celebahq", "folder", "bair", "ucf101")
PROGRESS = ".progress"
FORMAT = 1
FFHQ_VAL_FROM = 60000  # taming-transformers' FFHQ split: 0..59999 train, 60000..69999 validation
CELEBAHQ_VAL_FRACTION = 0.1
JPEG_QUALITY = 95  # --size: downscaled images are stored as JPEG at this quality
_OURS = re.compile(r"(train|val)-\d{6,}\.tar")
_PARTIAL = re.compile(r"\.(train|val)-\d{6,}\.tar\.partial")  # a shard being written (_write_shard)
# options each layout takes (DatasetOptions field names); others given are refused
_APPLIES = {"imagenet": {"val_labels", "synsets"}, "ffhq": {"val_from", "train_list", "val_list"},
            "celebahq": {"val_fraction", "train_list", "val_list"}, "folder": {"val_fraction"}, "bair": set(),
            "ucf101": {"train_list", "val_list"}}


@dataclass(frozen=True)
class DatasetOptions:
    """Settings of ``prepare_dataset``; None: the layout's default (module docstring)."""

    val_labels: Optional[Path] = None
    synsets: Optional[Path] = None
    val_from: Optional[int] = None
    val_fraction: Optional[float] = None
    train_list: Optional[Path] = None
    val_list: Optional[Path] = None
    size: Optional[int] = None  # store downscaled to this short side (JPEG); None: original bytes
    per_shard: int = 1000
    workers: int = min(4, os.cpu_count() or 1)  # reader processes (1: in this process)
    restart: bool = False
    quiet: bool = False


@dataclass(frozen=True)
class Item:
    """One source image and the sample it becomes."""

    path: str  # relative to SRC, POSIX
    key: str
    cls: Optional[int] = None
    meta: dict = field(default_factory=dict)  # json fields besides "path"


@dataclass
class Plan:
    splits: dict[str, list[Item]]  # "train" / "val" -> items in shard order
    classes: Optional[dict[str, int]]  # None: unlabelled
    pins: dict  # resolved layout settings that shape the output (recorded in job.json)
    notes: list[str] = field(default_factory=list)
    reader: str = "image"  # "image": files as they are; "frames" (a folder of frames) or "video": to mp4


@dataclass
class SplitReport:
    pattern: str  # brace pattern of the shards, for data.train / data.val
    shards: list[Path]
    count: int  # samples in the shards
    written_now: int  # samples written by this run


@dataclass
class DatasetReport:
    out: Path
    layout: str
    splits: dict[str, SplitReport]
    classes: Optional[dict[str, int]]
    skipped: list[SkippedFile]
    notes: list[str]
    images_per_s: float


# --------------------------------------------------------------------------------------------
# Source files
# --------------------------------------------------------------------------------------------


def _images(folder: Path, what: str) -> list[str]:
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder. {what}")
    paths = _list_images(folder)
    if not paths:
        raise DataError(f"No image files under {folder} (looked for {', '.join(sorted(IMAGE_SUFFIXES))}). {what}")
    return paths


def _digest(path: Optional[Path], option: str) -> Optional[str]:
    """A short content hash of an input file (labels, lists), for job.json."""
    if path is not None and not path.is_file():
        raise DataError(f"{option} {path}: no such file.")
    return None if path is None else hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _lines(path: Path, option: str) -> list[str]:
    if not path.is_file():
        raise DataError(f"{option} {path}: no such file.")
    return [s.strip() for s in path.read_text(errors="replace").splitlines() if s.strip()]


def _some(xs: list, n: int = 3) -> str:
    return ", ".join(map(str, xs[:n])) + (f" and {len(xs) - n} more" if len(xs) > n else "")


# --------------------------------------------------------------------------------------------
# ImageNet
# --------------------------------------------------------------------------------------------

_IMAGENET = ("`rvq data prepare imagenet` expects SRC/train/<synset>/*.JPEG and SRC/val/ (synset folders, or "
             "flat ILSVRC2012_val_*.JPEG with --val-labels); with Kaggle's download SRC is ILSVRC/Data/CLS-LOC. "
             "See docs/datasets.md.")


def _synset_ids(path: Path) -> dict[int, str]:
    """ILSVRC2012_ID -> synset, from the devkit's meta.mat or a text file in ID order."""
    if path.suffix.lower() == ".mat":
        try:
            from scipy.io import loadmat
        except ImportError:
            raise DataError(f"--synsets {path}: reading meta.mat needs scipy (pip install scipy); or pass a text "
                            "file with the synset of ILSVRC2012_ID i on line i.") from None
        try:
            s = loadmat(path, squeeze_me=True)["synsets"]
            return {int(i): str(w) for i, w in zip(s["ILSVRC2012_ID"], s["WNID"])}
        except Exception as exn:  # not a devkit meta.mat
            raise DataError(f"--synsets {path}: not the devkit's meta.mat ({type(exn).__name__}: {exn}).") from None
    wnids = [s.split()[0] for s in _lines(path, "--synsets")]
    if len(wnids) == 1000 and wnids == sorted(wnids):
        raise DataError(f"--synsets {path} lists the synsets in sorted order (like Kaggle's LOC_synset_mapping.txt), "
                        "but the devkit's ground truth numbers them by ILSVRC2012_ID, a different order. Pass the "
                        "devkit's data/meta.mat instead, or use Kaggle's LOC_val_solution.csv as --val-labels.")
    return dict(enumerate(wnids, 1))


def _val_labels(path: Path, synsets: Optional[Path]) -> dict[str, str]:
    """Validation image id (file name without extension) -> synset."""
    lines = _lines(path, "--val-labels")
    if lines and all(s.isdigit() for s in lines):  # devkit: the ILSVRC2012_ID of image i on line i
        if synsets is None:
            raise DataError(f"--val-labels {path} holds ILSVRC2012_IDs (the devkit's ground truth); mapping them to "
                            "synsets needs --synsets ILSVRC2012_devkit_t12/data/meta.mat.")
        ids = _synset_ids(synsets)
        unknown = sorted({int(s) for s in lines} - set(ids))
        if unknown:
            raise DataError(f"--val-labels {path} uses ILSVRC2012_IDs that --synsets {synsets} does not define: "
                            f"{_some(unknown)}.")
        return {f"ILSVRC2012_val_{i:08d}": ids[int(s)] for i, s in enumerate(lines, 1)}
    if synsets is not None:
        raise DataError(f"--synsets is only used with the devkit's ground truth (one ILSVRC2012_ID per line); "
                        f"--val-labels {path} is not that file.")
    if not lines or "," not in lines[0]:
        raise DataError(f"--val-labels {path}: not a labels file rvq reads. Give Kaggle's LOC_val_solution.csv "
                        "(ImageId,PredictionString) or the devkit's ILSVRC2012_validation_ground_truth.txt.")
    labels = {}
    for n, row in enumerate(csv.reader(lines), 1):
        if n == 1 and row[0] == "ImageId":
            continue
        if len(row) < 2 or not row[1].split():
            raise DataError(f"--val-labels {path}, line {n}: expected ImageId,PredictionString, got {','.join(row)!r}.")
        labels[row[0].strip()] = row[1].split()[0]
    return labels


def _val_synsets(paths: list[str], val_dir: Path, o: DatasetOptions) -> list[str]:
    """The synset of each validation image: its folder, its labels-file entry, or both (must agree)."""
    labels = _val_labels(o.val_labels, o.synsets) if o.val_labels is not None else None
    found, missing, wrong = [], [], []
    for p in paths:
        folder = p.split("/", 1)[0] if "/" in p else None
        listed = labels.get(Path(p).name.split(".", 1)[0]) if labels is not None else None
        if folder and listed and folder != listed:
            wrong.append(f"{p} (file says {listed})")
        if not (folder or listed):
            missing.append(p)
        found.append(folder or listed)
    if missing and labels is None:
        raise DataError(f"{len(missing)} validation images sit directly in {val_dir} (e.g. {_some(missing)}), so their "
                        "classes must come from a labels file: pass --val-labels LOC_val_solution.csv (Kaggle) or "
                        "--val-labels ILSVRC2012_validation_ground_truth.txt --synsets meta.mat (devkit), or sort "
                        "them into synset folders (valprep.sh).")
    if missing:
        raise DataError(f"--val-labels {o.val_labels} has no entry for {len(missing)} of the {len(paths)} validation "
                        f"images in {val_dir} (e.g. {_some(missing)}). Is it the labels file of this validation set?")
    if wrong:
        raise DataError(f"--val-labels {o.val_labels} disagrees with the synset folders of {len(wrong)} validation "
                        f"images: {_some(wrong)}. Drop --val-labels (the folders give the labels) or fix the folders.")
    return found


def _plan_imagenet(src: Path, o: DatasetOptions) -> Plan:
    train = _images(src / "train", _IMAGENET)
    loose = [p for p in train if "/" not in p]
    if loose:
        raise DataError(f"{len(loose)} training images sit directly in {src / 'train'} (e.g. {_some(loose)}); each "
                        f"must be in its synset folder. {_IMAGENET}")
    val = _images(src / "val", _IMAGENET)
    synsets = sorted({p.split("/", 1)[0] for p in train})
    classes = {s: i for i, s in enumerate(synsets)}
    val_syn = _val_synsets(val, src / "val", o)
    unknown = sorted(set(val_syn) - set(classes))
    if unknown:
        raise DataError(f"Validation images of {len(unknown)} synsets that train/ has no folder for: {_some(unknown)}. "
                        "Labels follow the sorted synset folders of train/; is train/ complete?")
    splits = {}
    for split, paths, syns in (("train", train, [p.split("/", 1)[0] for p in train]), ("val", val, val_syn)):
        rel = [f"{split}/{p}" for p in paths]
        splits[split] = [Item(r, k, classes[s], {"synset": s}) for r, k, s in zip(rel, _keys(rel), syns)]
    pins = {"val_labels": _digest(o.val_labels, "--val-labels"), "synsets": _digest(o.synsets, "--synsets")}
    return Plan(splits, classes, pins)


# --------------------------------------------------------------------------------------------
# FFHQ and CelebA-HQ: unlabelled images named by index
# --------------------------------------------------------------------------------------------

_INDEX = re.compile(r"(\d+)\D*$")  # the last number in a file name: 00042.png, imgHQ00042.npy -> 42


def _indexed(src: Path, layout: str) -> list[tuple[int, str]]:
    """(index, relative path) of every image under ``src``, by index."""
    what = f"`rvq data prepare {layout}` takes the folder of images named by index; see docs/datasets.md."
    found, unnamed, at = [], [], {}
    for p in _images(src, what):
        m = _INDEX.search(Path(p).stem)
        if m is None:
            unnamed.append(p)
            continue
        i = int(m.group(1))
        if i in at:
            raise DataError(f"Image {i} is under {src} twice: {at[i]} and {p}. Point SRC at one copy of the dataset "
                            "(e.g. ffhq-dataset/images1024x1024, not ffhq-dataset).")
        at[i] = p
        found.append((i, p))
    if unnamed:
        raise DataError(f"{len(unnamed)} images under {src} have no index in their name (e.g. {_some(unnamed)}); "
                        f"{layout} images are named by number (00000.png, 0.jpg). For other images use "
                        "`rvq data prepare folder`.")
    return sorted(found)


def _list_indices(path: Path, option: str) -> set[int]:
    out = set()
    for name in _lines(path, option):
        m = _INDEX.search(Path(name.split()[0]).stem)
        if m is None:
            raise DataError(f"{option} {path}: {name!r} has no image number in it (one file name per line).")
        out.add(int(m.group(1)))
    return out


def _split_by_lists(indexed: list[tuple[int, str]], o: DatasetOptions, notes: list[str]) -> Callable[[int], str]:
    if o.train_list is None or o.val_list is None:
        raise DataError("Pass both --train-list and --val-list (one file name per line), or neither.")
    train, val = _list_indices(o.train_list, "--train-list"), _list_indices(o.val_list, "--val-list")
    if train & val:
        raise DataError(f"Images in both --train-list and --val-list: {_some(sorted(train & val))}.")
    missing = sorted((train | val) - {i for i, _ in indexed})
    if missing:
        raise DataError(f"The lists name {len(missing)} images that are not in the source folder (numbers "
                        f"{_some(missing)}). Is the folder complete, and are these the lists of this dataset?")
    left = len(indexed) - len(train) - len(val)
    if left:
        notes.append(f"{left} images are in neither list and were left out")
    return lambda i: "train" if i in train else "val" if i in val else ""


def _unlabelled(layout: str, indexed: list[tuple[int, str]], split_of: Callable[[int], str]) -> dict[str, list[Item]]:
    keys = _keys([f"{layout}/{p}" for _, p in indexed])
    splits: dict[str, list[Item]] = {"train": [], "val": []}
    for (i, p), k in zip(indexed, keys):
        if s := split_of(i):
            splits[s].append(Item(p, k, None, {"index": i}))
    return splits


def _plan_faces(layout: str, src: Path, o: DatasetOptions) -> Plan:
    indexed, notes = _indexed(src, layout), []
    lists = o.train_list is not None or o.val_list is not None
    rule = "val_from" if layout == "ffhq" else "val_fraction"
    if lists and getattr(o, rule) is not None:
        raise DataError(f"--{rule.replace('_', '-')} and --train-list/--val-list both choose the validation images; "
                        "pass one of them.")
    pins = {"train_list": _digest(o.train_list, "--train-list"), "val_list": _digest(o.val_list, "--val-list")}
    if lists:
        split_of = _split_by_lists(indexed, o, notes)
    elif layout == "ffhq":
        pins["val_from"] = start = FFHQ_VAL_FROM if o.val_from is None else o.val_from
        split_of = lambda i: "val" if i >= start else "train"
    else:
        pins["val_fraction"] = f = CELEBAHQ_VAL_FRACTION if o.val_fraction is None else o.val_fraction
        cut = indexed[len(indexed) - round(len(indexed) * f)][0] if round(len(indexed) * f) else None
        split_of = lambda i: "val" if cut is not None and i >= cut else "train"
    return Plan(_unlabelled(layout, indexed, split_of), None, pins, notes)


# --------------------------------------------------------------------------------------------
# A generic folder
# --------------------------------------------------------------------------------------------


def _hash_unit(path: str) -> float:
    """A number in [0, 1) fixed by the path alone: adding files never moves others between splits."""
    return int.from_bytes(hashlib.blake2b(path.encode(), digest_size=8).digest(), "big") / 2**64


def _plan_folder(src: Path, o: DatasetOptions) -> Plan:
    paths = _images(src, "`rvq data prepare folder` takes a folder of images (optionally one sub-folder per class).")
    classes = _class_layout(paths)
    f = o.val_fraction or 0.0
    splits: dict[str, list[Item]] = {"train": [], "val": []}
    for p, k in zip(paths, _keys(paths)):
        name = p.split("/", 1)[0] if classes is not None else None
        item = Item(p, k, classes[name], {"class": name}) if name is not None else Item(p, k)
        splits["val" if _hash_unit(p) < f else "train"].append(item)
    return Plan(splits, classes, {"val_fraction": f})


def _plan_bair(src: Path, o: DatasetOptions) -> Plan:
    from .video_datasets import plan_bair

    splits, notes = plan_bair(src)
    return Plan({s: [Item(p, k) for p, k in zip(paths, _keys(paths))] for s, paths in splits.items()}, None, {},
                notes, reader="frames")


def _plan_ucf101(src: Path, o: DatasetOptions) -> Plan:
    from .video_datasets import plan_ucf101

    splits, classes, pins, notes = plan_ucf101(src, o.train_list, o.val_list)
    items = {s: [Item(p, k, classes[p.split("/", 1)[0]], {"class": p.split("/", 1)[0]})
                 for p, k in zip(paths, _keys(paths))] for s, paths in splits.items()}
    return Plan(items, classes, pins, notes, reader="video")


PLANNERS: dict[str, Callable[[Path, DatasetOptions], Plan]] = {
    "imagenet": _plan_imagenet,
    "ffhq": lambda src, o: _plan_faces("ffhq", src, o),
    "celebahq": lambda src, o: _plan_faces("celebahq", src, o),
    "folder": _plan_folder,
    "bair": _plan_bair,
    "ucf101": _plan_ucf101,
}


# --------------------------------------------------------------------------------------------
# Writing, resumably
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Chunk:
    split: str
    index: int
    items: list[Item]

    @property
    def name(self) -> str:
        return _shard_name(self.split, self.index)

    def digest(self) -> str:
        rows = [[it.path, it.key, it.cls, it.meta] for it in self.items]
        return hashlib.blake2b(json.dumps(rows).encode(), digest_size=16).hexdigest()


def _record_path(out: Path, name: str) -> Path:
    return out / PROGRESS / f"{name[:-4]}.json"


def _record(out: Path, chunk: _Chunk) -> Optional[dict]:
    """The record of ``chunk``'s shard when that shard is complete and holds what ``chunk`` says, else None."""
    try:
        rec = json.loads(_record_path(out, chunk.name).read_text())
        size = (out / chunk.name).stat().st_size
    except (OSError, ValueError):
        return None
    return rec if rec.get("items") == chunk.digest() and rec.get("bytes") == size else None


def _read(job: tuple[str, Optional[int]]) -> tuple[str, bytes] | str:
    """(field, bytes) to store, or why the file is unusable. With ``size``, images whose short side
    is larger are downscaled to it and stored as JPEG; others keep their bytes. Runs in workers."""
    path, size = job
    if size is not None:
        try:
            im = decode_rgb(Path(path).read_bytes())
            if min(im.size) > size:
                buf = io.BytesIO()
                _resize_short(im, size).save(buf, format="JPEG", quality=JPEG_QUALITY)
                return "jpg", buf.getvalue()
        except Exception:  # unusable: _load says why
            pass
    got = _load(path)
    if isinstance(got, str):  # PIL names its buffer (<_io.BytesIO object at 0x...>): keep reasons reproducible
        return re.sub(r" ?<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", got)
    return got


def _write_shard(path: Path, samples: Iterator[dict]) -> int:
    """Write one shard atomically (a hidden ``.partial`` file renamed when complete); return its sample count."""
    tmp, seen = path.with_name(f".{path.name}.partial"), set()
    try:
        _write_one(tmp, (_checked(s, seen) for s in samples))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return len(seen)


def _write_chunk(src: Path, out: Path, chunk: _Chunk, pool, size: Optional[int], progress: JobProgress,
                 reader: str = "image") -> dict:
    if reader == "image":
        read, jobs = _read, [(str(src / it.path), size) for it in chunk.items]
    else:  # videos: a folder of frames or a video file, written as mp4
        from .video_datasets import read_video_item

        read, jobs = read_video_item, [(reader, str(src / it.path), size) for it in chunk.items]
    results = map(read, jobs) if pool is None else pool.map(read, jobs, chunksize=1 if reader != "image" else 8)
    skipped = []

    def samples() -> Iterator[dict]:
        for it, got in zip(chunk.items, results):
            progress.advance(1)
            if isinstance(got, str):
                skipped.append([it.path, got])
                continue
            extra = got[2] if len(got) > 2 else {}  # videos: frames, fps, size
            sample = {"__key__": it.key, got[0]: got[1], "json": {"path": it.path, **it.meta, **extra}}
            if it.cls is not None:
                sample["cls"] = it.cls
            yield sample

    count = _write_shard(out / chunk.name, samples())
    rec = {"shard": chunk.name, "items": chunk.digest(), "bytes": (out / chunk.name).stat().st_size, "count": count,
           "files": [it.path for it in chunk.items], "skipped": skipped}
    write_json_atomic(_record_path(out, chunk.name), rec)
    return rec


@contextlib.contextmanager
def _pool(workers: int):
    if workers <= 1:
        yield None
        return
    pool = ProcessPoolExecutor(max_workers=workers)
    try:
        pool.submit(int).result()  # fork the workers now, before the progress bar starts its thread
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # Ctrl-C: do not read the rest of the shard first


def _ours(name: str) -> bool:
    return bool(_OURS.fullmatch(name) or _PARTIAL.fullmatch(name)) or name in ("classes.json", "skipped.txt")


def _check_job(out: Path, job: dict, restart: bool) -> None:
    """Start, continue, or refuse: ``out`` may only hold the same job's shards."""
    path = out / PROGRESS / "job.json"
    if restart and out.is_dir():
        clear_outputs(out, out / PROGRESS, _ours)
    diff = job_differences(path, job)
    if diff:
        raise DataError(f"{out} holds shards prepared from another source or with other settings "
                        f"({'; '.join(diff)}). Re-run with the same ones to continue, pass --restart to replace "
                        "them, or choose another OUT.")
    if diff is None and out.is_dir() and any(_OURS.fullmatch(p.name) for p in out.iterdir()):
        raise DataError(f"{out} already holds train-/val- shards without a record of how they were made. Pass "
                        "--restart to replace them, or choose another OUT.")
    (out / PROGRESS).mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, job)


def _remove_stale(out: Path, chunks: list[_Chunk]) -> None:
    """Shards (and records) of this job's splits beyond their current count: the source shrank."""
    ours = {c.name for c in chunks}
    for p in out.iterdir():
        if _OURS.fullmatch(p.name) and p.name not in ours:
            p.unlink()
            _record_path(out, p.name).unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------------


def _check_options(layout: str, src: Path, out: Path, o: DatasetOptions) -> None:
    if layout not in PLANNERS:
        raise DataError(f"Unknown dataset layout {layout!r}; choose one of {', '.join(LAYOUTS)} (docs/datasets.md).")
    given = [k for k in ("val_labels", "synsets", "val_from", "val_fraction", "train_list", "val_list")
             if getattr(o, k) is not None and k not in _APPLIES[layout]]
    if given:
        opts = ", ".join(f"--{k.replace('_', '-')}" for k in given)
        takes = ", ".join(sorted(f"--{k.replace('_', '-')}" for k in _APPLIES[layout]))
        raise DataError(f"{opts} does not apply to the {layout} layout (it takes {takes}).")
    for name, v, ok, rule in (("per-shard", o.per_shard, o.per_shard >= 1, "at least 1"),
                              ("workers", o.workers, o.workers >= 1, "at least 1"),
                              ("size", o.size, o.size is None or o.size >= 1, "at least 1"),
                              ("val-from", o.val_from, o.val_from is None or o.val_from >= 0, "at least 0"),
                              ("val-fraction", o.val_fraction, o.val_fraction is None or 0 <= o.val_fraction < 1,
                               "in [0, 1)")):
        if not ok:
            raise DataError(f"--{name} must be {rule}, got {v}.")
    if not src.is_dir():
        raise DataError(f"{src} is not a folder. Give the folder you downloaded and unpacked; docs/datasets.md says "
                        f"which one for {layout}.")
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} is a file; OUT must be a folder (it is created if missing).")


def _finish(out: Path, layout: str, plan: Plan, chunks: list[_Chunk], written: dict[str, int],
            rate: float) -> DatasetReport:
    counts: dict[str, int] = {}
    shards: dict[str, list[Path]] = {}
    skipped: dict[str, list[SkippedFile]] = {}
    for c in chunks:
        rec = json.loads(_record_path(out, c.name).read_text())
        counts[c.split] = counts.get(c.split, 0) + rec["count"]
        shards.setdefault(c.split, []).append(out / c.name)
        skipped.setdefault(c.split, []).extend(SkippedFile(*s) for s in rec["skipped"])
    every = [s for split in skipped.values() for s in split]
    write_json_atomic(out / "classes.json", plan.classes or {})
    write_text_atomic(out / "skipped.txt", "".join(f"{s.path}\t{s.reason}\n" for s in every))
    for split, n in counts.items():
        if n == 0:
            first = skipped[split][0]
            raise DataError(f"None of the {len(plan.splits[split])} {split} images could be decoded (e.g. "
                            f"{first.path}: {first.reason}); all are listed in {out / 'skipped.txt'}.")
    reports = {s: SplitReport(shard_pattern(out, s, len(shards[s])), shards[s], counts[s], written.get(s, 0))
               for s in shards}
    return DatasetReport(out, layout, reports, plan.classes, every, plan.notes, rate)


def prepare_dataset(layout: str, src: str | os.PathLike, out: str | os.PathLike,
                    options: DatasetOptions = DatasetOptions()) -> DatasetReport:
    """Convert the dataset ``layout`` found at ``src`` into ``out/train-NNNNNN.tar`` and
    ``out/val-NNNNNN.tar`` (plus ``classes.json`` and ``skipped.txt``); see the module docstring.
    Resumable: re-running with the same arguments writes only the shards not yet complete."""
    src, out, o = Path(src).expanduser(), Path(out).expanduser(), options
    _check_options(layout, src, out, o)
    plan = PLANNERS[layout](src, o)
    if not plan.splits["train"]:
        raise DataError(f"No training images: the split settings put all {len(plan.splits['val'])} images into "
                        "validation. Choose a --val-from, --val-fraction or lists that leave some for training.")
    if not plan.splits["val"]:
        plan.notes.append("no validation images (no val shards written)")
    plan.splits["train"] = shuffled_order(plan.splits["train"])  # class folders mixed across the shards
    job = {"format": FORMAT, "layout": layout, "source": str(src.resolve()), "per_shard": o.per_shard,
           "size": o.size, "train_order": "shuffled-v1", **plan.pins}
    _check_job(out, job, o.restart)
    chunks = [_Chunk(s, i // o.per_shard, items[i : i + o.per_shard])
              for s, items in plan.splits.items() for i in range(0, len(items), o.per_shard)]
    todo = [c for c in chunks if _record(out, c) is None]
    written: dict[str, int] = {}
    with _pool(o.workers if todo else 1) as pool, \
            JobProgress(f"prepare {layout}", sum(len(c.items) for c in todo), silent=o.quiet) as progress:
        for c in todo:
            written[c.split] = written.get(c.split, 0) + _write_chunk(src, out, c, pool, o.size, progress,
                                                                      plan.reader)["count"]
        rate = progress.rate
    _remove_stale(out, chunks)
    return _finish(out, layout, plan, chunks, written, rate)
