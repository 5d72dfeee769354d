"""The video layouts of ``rvq data prepare``: BAIR Robot Pushing and UCF101 as users have them
on disk, planned into the same resumable, deterministic shard writer (``writer.py``) as the image
layouts (``layouts.py``): one sample per video, ``mp4`` (H.264, written by PyAV) + ``json``.

- ``bair``: the frame-folder form of BAIR Robot Pushing, as the common extraction scripts write
  it from the published TFRecords: ``SRC/train/…/<trajectory>/`` and ``SRC/test/…/<trajectory>/``,
  each trajectory a folder of its frames (``0.png`` … ``29.png``; any nesting depth; frames
  ordered by the last number in their name). ``test`` is written as the ``val`` shards.
- ``ucf101``: the UCF-101 tree of ``.avi`` files (``SRC/<Class>/v_<Class>_gNN_cNN.avi``) with the
  official split lists (``trainlist01.txt`` / ``testlist01.txt``, given with ``--train-list`` /
  ``--val-list``, or found in ``ucfTrainTestlist/`` inside or beside SRC). Labels are the official
  ``classInd.txt`` numbers minus one when that file sits beside the lists, else the class
  folders in sorted order.

``--size S`` resizes every frame so its short side is S (even sizes, as H.264 needs); without it
frames keep their size (rounded down to even).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from ..errors import option
from .format import DataError
from .mp4 import encode_mp4

__all__ = ["BAIR_FPS", "frames_to_mp4", "plan_bair", "plan_ucf101", "read_video_item", "video_to_mp4"]

BAIR_FPS = 10  # BAIR trajectories carry no frame rate; 10 fps is recorded in their json
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
_LAST_NUMBER = re.compile(r"(\d+)\D*$")


def _even_size(h: int, w: int, size: Optional[int]) -> tuple[int, int]:
    if size is not None:
        scale = size / min(h, w)
        h, w = round(h * scale), round(w * scale)
    return max(2, h - h % 2), max(2, w - w % 2)


def _resize(frames: list[np.ndarray], size: Optional[int]) -> np.ndarray:
    h, w = frames[0].shape[:2]
    th, tw = _even_size(h, w, size)
    if (th, tw) != (h, w):
        frames = [np.asarray(Image.fromarray(f).resize((tw, th), Image.BICUBIC)) for f in frames]
    return np.stack(frames)


def frames_to_mp4(folder: str, size: Optional[int], fps: int = BAIR_FPS) -> tuple[str, bytes, dict] | str:
    """A folder of frames -> ("mp4", bytes, meta), or why it is unusable. Runs in workers."""
    try:
        files = sorted((p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTS),
                       key=lambda p: (int(m.group(1)) if (m := _LAST_NUMBER.search(p.stem)) else -1, p.name))
        if not files:
            return "no frames in the folder"
        frames = [np.asarray(Image.open(p).convert("RGB")) for p in files]
        if len({f.shape for f in frames}) > 1:
            return f"frames of different sizes: {sorted({f.shape[:2] for f in frames})}"
        clip = _resize(frames, size)
        return "mp4", encode_mp4(clip, fps=fps), {"frames": len(clip), "fps": fps, "height": clip.shape[1],
                                                   "width": clip.shape[2]}
    except Exception as err:  # noqa: BLE001 - a bad trajectory is skipped and listed, never fatal
        return f"{type(err).__name__}: {err}".replace("\n", " ")


def video_to_mp4(path: str, size: Optional[int]) -> tuple[str, bytes, dict] | str:
    """Any video file PyAV reads (UCF101's .avi) -> ("mp4", bytes, meta) at its own frame rate."""
    import av

    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or 25
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        if not frames:
            return "no decodable frames"
        fps = max(1, round(float(rate)))
        clip = _resize(frames, size)
        return "mp4", encode_mp4(clip, fps=fps), {"frames": len(clip), "fps": fps, "height": clip.shape[1],
                                                   "width": clip.shape[2]}
    except Exception as err:  # noqa: BLE001
        return f"{type(err).__name__}: {err}".replace("\n", " ")


def _trajectories(root: Path) -> list[str]:
    """Folders under ``root`` that directly hold image files, sorted, relative to ``root``'s parent."""
    found = []
    for d in sorted(p for p in root.rglob("*") if p.is_dir()):
        if any(f.suffix.lower() in IMAGE_EXTS for f in d.iterdir() if f.is_file()):
            found.append(d)
    if any(f.suffix.lower() in IMAGE_EXTS for f in root.iterdir() if f.is_file()):
        found.insert(0, root)
    return [str(d.relative_to(root.parent)) for d in found]


def plan_bair(src: Path) -> tuple[dict[str, list[str]], list[str]]:
    """{"train": [...], "val": [...]} trajectory folders (relative to ``src``) and notes."""
    missing = [s for s in ("train", "test") if not (src / s).is_dir()]
    if missing:
        raise DataError(f"`rvq data prepare bair` expects SRC/train/ and SRC/test/ holding one folder of frames per "
                        f"trajectory (0.png … 29.png); {src} has no {' or '.join(missing)}/ folder. docs/datasets.md "
                        "says how to get this layout from the published TFRecords.")
    splits = {"train": _trajectories(src / "train"), "val": _trajectories(src / "test")}
    if not splits["train"]:
        raise DataError(f"No trajectory folders (folders of .png/.jpg frames) under {src / 'train'}.")
    return splits, ["BAIR's test split is written as the val shards"]


def _split_list(path: Path) -> list[str]:
    """Video paths of an official UCF101 split list (``Class/v_….avi [label]`` per line)."""
    return [line.split()[0].replace("\\", "/") for line in path.read_text().splitlines() if line.strip()]


def _find_list(src: Path, name: str) -> Optional[Path]:
    for folder in (src / "ucfTrainTestlist", src.parent / "ucfTrainTestlist", src):
        if (folder / name).is_file():
            return folder / name
    return None


def plan_ucf101(src: Path, train_list: Optional[Path], val_list: Optional[Path]
                ) -> tuple[dict[str, list[str]], dict[str, int], dict, list[str]]:
    """Splits of video paths (relative to ``src``), classes, pins for the job record, and notes."""
    # a split-list folder kept inside SRC is not a class
    names = sorted(p.name for p in src.iterdir() if p.is_dir() and p.name != "ucfTrainTestlist")
    classes = {c: i for i, c in enumerate(names)}
    if not classes:
        raise DataError(f"`rvq data prepare ucf101` expects SRC/<Class>/v_<Class>_gNN_cNN.avi (the UCF-101 folder); "
                        f"{src} has no class folders.")
    lists = {}
    for split, given, name in (("train", train_list, "trainlist01.txt"), ("val", val_list, "testlist01.txt")):
        path = Path(given).expanduser() if given else _find_list(src, name)
        if path is None or not path.is_file():
            raise DataError(f"the UCF101 {split} split list was not found: pass {option(split + '_list')} PATH "
                            f"(the official ucfTrainTestlist/{name}), or put ucfTrainTestlist/ inside or beside "
                            f"{src}.")
        lists[split] = path
    splits, notes = {}, []
    index = lists["train"].parent / "classInd.txt"  # the official numbering, when it came with the lists
    if index.is_file():
        official = {}
        for line in index.read_text().splitlines():
            if line.strip():
                number, name = line.split()[:2]
                official[name] = int(number) - 1
        if set(official) != set(classes):
            raise DataError(f"{index} names other classes than the folders of {src} (e.g. "
                            f"{sorted(set(official) ^ set(classes))[:3]}). Is SRC the UCF-101 folder?")
        classes = dict(sorted(official.items(), key=lambda kv: kv[1]))
    else:
        notes.append("no classInd.txt beside the split lists: labels are the class folders in sorted order")
    for split, path in lists.items():
        videos = _split_list(path)
        missing = [v for v in videos if not (src / v).is_file()]
        unknown = sorted({v.split("/", 1)[0] for v in videos} - set(classes))
        if unknown:
            raise DataError(f"{path} names classes with no folder in {src}: {', '.join(unknown[:5])}. Is SRC the "
                            "UCF-101 folder?")
        if missing:
            notes.append(f"{len(missing)} video(s) of {path.name} are missing from {src} (e.g. {missing[0]}); "
                         "they are skipped and listed")
        splits[split] = videos
    pins = {"train_list": str(lists["train"].resolve()), "val_list": str(lists["val"].resolve())}
    return splits, classes, pins, notes


def read_video_item(job: tuple[str, str, Optional[int]]) -> tuple[str, bytes, dict] | str:
    """Worker entry: ("frames" | "video", path, size) -> ("mp4", bytes, meta) or a reason."""
    kind, path, size = job
    if kind == "frames":
        return frames_to_mp4(path, size)
    if not Path(path).is_file():
        return "file not found"
    return video_to_mp4(path, size)
