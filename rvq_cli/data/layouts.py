"""The image layouts of ``rvq data prepare``: ImageNet, FFHQ, CelebA-HQ and any folder, as users
have them on disk, planned into train/validation lists of ``Item``s (a ``Plan``) that the
resumable shard writer (``writer.py``) stores. The video layouts are ``video_layouts.py``.

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

Keys come from the path (``folders.path_keys``; ffhq/celebahq keys start with the layout name so
the two never clash in FacesHQ).
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import describe, option
from .folders import IMAGE_SUFFIXES, class_layout, list_images, path_keys
from .format import DataError

FFHQ_VAL_FROM = 60000  # taming-transformers' FFHQ split: 0..59999 train, 60000..69999 validation
CELEBAHQ_VAL_FRACTION = 0.1


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
    """What a layout found at SRC: the items of each split, labels, and the settings to pin."""

    splits: dict[str, list[Item]]  # "train" / "val" -> items in shard order
    classes: Optional[dict[str, int]]  # None: unlabelled
    pins: dict  # resolved layout settings that shape the output (recorded in job.json)
    notes: list[str] = field(default_factory=list)
    reader: str = "image"  # "image": files as they are; "frames" (a folder of frames) or "video": to mp4


# --------------------------------------------------------------------------------------------
# Source files
# --------------------------------------------------------------------------------------------


def _images(folder: Path, what: str) -> list[str]:
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder. {what}")
    paths = list_images(folder)
    if not paths:
        raise DataError(f"No image files under {folder} (looked for {', '.join(sorted(IMAGE_SUFFIXES))}). {what}")
    return paths


def _digest(path: Optional[Path], param: str) -> Optional[str]:
    """A short content hash of an input file (labels, lists; given as the option ``param``), for job.json."""
    if path is not None and not path.is_file():
        raise DataError(f"{option(param)} {path}: no such file.")
    return None if path is None else hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _lines(path: Path, param: str) -> list[str]:
    if not path.is_file():
        raise DataError(f"{option(param)} {path}: no such file.")
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
            raise DataError(f"{option('synsets')} {path}: reading meta.mat needs scipy (pip install scipy); or pass "
                            "a text file with the synset of ILSVRC2012_ID i on line i.") from None
        try:
            s = loadmat(path, squeeze_me=True)["synsets"]
            return {int(i): str(w) for i, w in zip(s["ILSVRC2012_ID"], s["WNID"])}
        except Exception as exn:  # not a devkit meta.mat
            raise DataError(f"{option('synsets')} {path}: not the devkit's meta.mat "
                            f"({describe(exn)}).") from None
    wnids = [s.split()[0] for s in _lines(path, "synsets")]
    if len(wnids) == 1000 and wnids == sorted(wnids):
        raise DataError(f"{option('synsets')} {path} lists the synsets in sorted order (like Kaggle's "
                        "LOC_synset_mapping.txt), but the devkit's ground truth numbers them by ILSVRC2012_ID, a "
                        "different order. Pass the devkit's data/meta.mat instead, or use Kaggle's "
                        f"LOC_val_solution.csv as {option('val_labels')}.")
    return dict(enumerate(wnids, 1))


def _val_labels(path: Path, synsets: Optional[Path]) -> dict[str, str]:
    """Validation image id (file name without extension) -> synset."""
    lines = _lines(path, "val_labels")
    if lines and all(s.isdigit() for s in lines):  # devkit: the ILSVRC2012_ID of image i on line i
        if synsets is None:
            raise DataError(f"{option('val_labels')} {path} holds ILSVRC2012_IDs (the devkit's ground truth); "
                            f"mapping them to synsets needs {option('synsets')} ILSVRC2012_devkit_t12/data/meta.mat.")
        ids = _synset_ids(synsets)
        unknown = sorted({int(s) for s in lines} - set(ids))
        if unknown:
            raise DataError(f"{option('val_labels')} {path} uses ILSVRC2012_IDs that {option('synsets')} {synsets} "
                            f"does not define: {_some(unknown)}.")
        return {f"ILSVRC2012_val_{i:08d}": ids[int(s)] for i, s in enumerate(lines, 1)}
    if synsets is not None:
        raise DataError(f"{option('synsets')} is only used with the devkit's ground truth (one ILSVRC2012_ID per "
                        f"line); {option('val_labels')} {path} is not that file.")
    if not lines or "," not in lines[0]:
        raise DataError(f"{option('val_labels')} {path}: not a labels file rvq reads. Give Kaggle's "
                        "LOC_val_solution.csv (ImageId,PredictionString) or the devkit's "
                        "ILSVRC2012_validation_ground_truth.txt.")
    labels = {}
    for n, row in enumerate(csv.reader(lines), 1):
        if n == 1 and row[0] == "ImageId":
            continue
        if len(row) < 2 or not row[1].split():
            raise DataError(f"{option('val_labels')} {path}, line {n}: expected ImageId,PredictionString, got "
                            f"{','.join(row)!r}.")
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
                        f"classes must come from a labels file: pass {option('val_labels')} LOC_val_solution.csv "
                        f"(Kaggle) or {option('val_labels')} ILSVRC2012_validation_ground_truth.txt with "
                        f"{option('synsets')} meta.mat (devkit), or sort them into synset folders (valprep.sh).")
    if missing:
        raise DataError(f"{option('val_labels')} {o.val_labels} has no entry for {len(missing)} of the {len(paths)} "
                        f"validation images in {val_dir} (e.g. {_some(missing)}). Is it the labels file of this "
                        "validation set?")
    if wrong:
        raise DataError(f"{option('val_labels')} {o.val_labels} disagrees with the synset folders of {len(wrong)} "
                        f"validation images: {_some(wrong)}. Drop {option('val_labels')} (the folders give the labels) "
                        "or fix the folders.")
    return found


def plan_imagenet(src: Path, o: DatasetOptions) -> Plan:
    """The ``imagenet`` layout: labels from the sorted synset folders of train/, for both splits."""
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
        splits[split] = [Item(r, k, classes[s], {"synset": s}) for r, k, s in zip(rel, path_keys(rel), syns)]
    pins = {"val_labels": _digest(o.val_labels, "val_labels"), "synsets": _digest(o.synsets, "synsets")}
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


def _list_indices(path: Path, param: str) -> set[int]:
    out = set()
    for name in _lines(path, param):
        m = _INDEX.search(Path(name.split()[0]).stem)
        if m is None:
            raise DataError(f"{option(param)} {path}: {name!r} has no image number in it (one file name per line).")
        out.add(int(m.group(1)))
    return out


def _split_by_lists(indexed: list[tuple[int, str]], o: DatasetOptions, notes: list[str]) -> Callable[[int], str]:
    if o.train_list is None or o.val_list is None:
        raise DataError(f"Pass both {option('train_list')} and {option('val_list')} (one file name per line), or "
                        "neither.")
    train, val = _list_indices(o.train_list, "train_list"), _list_indices(o.val_list, "val_list")
    if train & val:
        raise DataError(f"Images in both {option('train_list')} and {option('val_list')}: "
                        f"{_some(sorted(train & val))}.")
    missing = sorted((train | val) - {i for i, _ in indexed})
    if missing:
        raise DataError(f"The lists name {len(missing)} images that are not in the source folder (numbers "
                        f"{_some(missing)}). Is the folder complete, and are these the lists of this dataset?")
    left = len(indexed) - len(train) - len(val)
    if left:
        notes.append(f"{left} images are in neither list and were left out")
    return lambda i: "train" if i in train else "val" if i in val else ""


def _unlabelled(layout: str, indexed: list[tuple[int, str]], split_of: Callable[[int], str]) -> dict[str, list[Item]]:
    keys = path_keys([f"{layout}/{p}" for _, p in indexed])
    splits: dict[str, list[Item]] = {"train": [], "val": []}
    for (i, p), k in zip(indexed, keys):
        if s := split_of(i):
            splits[s].append(Item(p, k, None, {"index": i}))
    return splits


def plan_faces(layout: str, src: Path, o: DatasetOptions) -> Plan:
    """The ``ffhq`` or ``celebahq`` layout (``layout``): unlabelled images split by index or by lists."""
    indexed, notes = _indexed(src, layout), []
    lists = o.train_list is not None or o.val_list is not None
    rule = "val_from" if layout == "ffhq" else "val_fraction"
    if lists and getattr(o, rule) is not None:
        raise DataError(f"{option(rule)} and {option('train_list')}/{option('val_list')} both choose the validation "
                        "images; pass one of them.")
    pins = {"train_list": _digest(o.train_list, "train_list"), "val_list": _digest(o.val_list, "val_list")}
    if lists:
        split_of = _split_by_lists(indexed, o, notes)
    elif layout == "ffhq":
        pins["val_from"] = start = FFHQ_VAL_FROM if o.val_from is None else o.val_from

        def split_of(i: int) -> str:
            return "val" if i >= start else "train"
    else:
        pins["val_fraction"] = f = CELEBAHQ_VAL_FRACTION if o.val_fraction is None else o.val_fraction
        cut = indexed[len(indexed) - round(len(indexed) * f)][0] if round(len(indexed) * f) else None

        def split_of(i: int) -> str:
            return "val" if cut is not None and i >= cut else "train"
    return Plan(_unlabelled(layout, indexed, split_of), None, pins, notes)


# --------------------------------------------------------------------------------------------
# A generic folder
# --------------------------------------------------------------------------------------------


def _hash_unit(path: str) -> float:
    """A number in [0, 1) fixed by the path alone: adding files never moves others between splits."""
    return int.from_bytes(hashlib.blake2b(path.encode(), digest_size=8).digest(), "big") / 2**64


def plan_folder(src: Path, o: DatasetOptions) -> Plan:
    """The ``folder`` layout: class sub-folders give labels; validation chosen by a hash of the path."""
    paths = _images(src, "`rvq data prepare folder` takes a folder of images (optionally one sub-folder per class).")
    classes = class_layout(paths)
    f = o.val_fraction or 0.0
    splits: dict[str, list[Item]] = {"train": [], "val": []}
    for p, k in zip(paths, path_keys(paths)):
        name = p.split("/", 1)[0] if classes is not None else None
        item = Item(p, k, classes[name], {"class": name}) if name is not None else Item(p, k)
        splits["val" if _hash_unit(p) < f else "train"].append(item)
    return Plan(splits, classes, {"val_fraction": f})

