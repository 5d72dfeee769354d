"""Datasets as users download them -> train/validation shards (what ``rvq data prepare`` runs).

Layouts (docs/datasets.md says what to download for each): ``imagenet``, ``ffhq``,
``celebahq`` and ``folder`` (images; each is described in ``layouts.py``), ``bair`` and
``ucf101`` (videos, one mp4 sample per trajectory / video; ``video_layouts.py``).

The layouts are planned by ``layouts.py`` (images) and ``video_layouts.py`` (videos) into lists
of items; training items are put in a fixed pseudo-random order of the sorted list
(``shuffled_order``: shards of sorted synset or class folders would make every batch nearly one
class), validation items stay sorted. ``writer.py`` writes them: ``OUT/S-000000.tar``, ... with
``per_shard`` files each, resumably (a re-run writes only the shards not yet complete; another
source or other settings are refused unless ``restart``); corrupt files are skipped and listed in
``OUT/skipped.txt``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ..errors import option
from .folders import path_keys
from .format import DataError, shuffled_order
from .layouts import DatasetOptions, Item, Plan, plan_faces, plan_folder, plan_imagenet
from .video_layouts import plan_bair, plan_ucf101
from .writer import DatasetReport, write_plan

LAYOUTS = ("imagenet", "ffhq", "celebahq", "folder", "bair", "ucf101")
FORMAT = 1
# options each layout takes (DatasetOptions field names); others given are refused
_APPLIES = {"imagenet": {"val_labels", "synsets"}, "ffhq": {"val_from", "train_list", "val_list"},
            "celebahq": {"val_fraction", "train_list", "val_list"}, "folder": {"val_fraction"}, "bair": set(),
            "ucf101": {"train_list", "val_list"}}


def _plan_bair(src: Path, o: DatasetOptions) -> Plan:
    """The ``bair`` layout: one video per trajectory folder of frames, unlabelled."""
    splits, notes = plan_bair(src)
    return Plan({s: [Item(p, k) for p, k in zip(paths, path_keys(paths))] for s, paths in splits.items()}, None, {},
                notes, reader="frames")


def _plan_ucf101(src: Path, o: DatasetOptions) -> Plan:
    """The ``ucf101`` layout: the official split lists, labels from classInd.txt or the class folders."""
    splits, classes, pins, notes = plan_ucf101(src, o.train_list, o.val_list)
    items = {s: [Item(p, k, classes[p.split("/", 1)[0]], {"class": p.split("/", 1)[0]})
                 for p, k in zip(paths, path_keys(paths))] for s, paths in splits.items()}
    return Plan(items, classes, pins, notes, reader="video")


PLANNERS: dict[str, Callable[[Path, DatasetOptions], Plan]] = {
    "imagenet": plan_imagenet,
    "ffhq": lambda src, o: plan_faces("ffhq", src, o),
    "celebahq": lambda src, o: plan_faces("celebahq", src, o),
    "folder": plan_folder,
    "bair": _plan_bair,
    "ucf101": _plan_ucf101,
}


def _check_options(layout: str, src: Path, out: Path, o: DatasetOptions) -> None:
    if layout not in PLANNERS:
        raise DataError(f"Unknown dataset layout {layout!r}; choose one of {', '.join(LAYOUTS)} (docs/datasets.md).")
    given = [k for k in ("val_labels", "synsets", "val_from", "val_fraction", "train_list", "val_list")
             if getattr(o, k) is not None and k not in _APPLIES[layout]]
    if given:
        opts = ", ".join(option(k) for k in given)
        takes = ", ".join(sorted(option(k) for k in _APPLIES[layout]))
        raise DataError(f"{opts} does not apply to the {layout} layout (it takes {takes}).")
    for name, v, ok, rule in (("per_shard", o.per_shard, o.per_shard >= 1, "at least 1"),
                              ("workers", o.workers, o.workers >= 1, "at least 1"),
                              ("size", o.size, o.size is None or o.size >= 1, "at least 1"),
                              ("val_from", o.val_from, o.val_from is None or o.val_from >= 0, "at least 0"),
                              ("val_fraction", o.val_fraction, o.val_fraction is None or 0 <= o.val_fraction < 1,
                               "in [0, 1)")):
        if not ok:
            raise DataError(f"{option(name)} must be {rule}, got {v}.")
    if not src.is_dir():
        raise DataError(f"{src} is not a folder. Give the folder you downloaded and unpacked; docs/datasets.md says "
                        f"which one for {layout}.")
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} is a file; OUT must be a folder (it is created if missing).")


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
                        f"validation. Choose a {option('val_from')}, {option('val_fraction')} or lists that leave "
                        "some for training.")
    if not plan.splits["val"]:
        plan.notes.append("no validation images (no val shards written)")
    plan.splits["train"] = shuffled_order(plan.splits["train"])  # class folders mixed across the shards
    job = {"format": FORMAT, "layout": layout, "source": str(src.resolve()), "per_shard": o.per_shard,
           "size": o.size, "train_order": "shuffled-v1", **plan.pins}
    return write_plan(src, out, layout, plan, job, o)
