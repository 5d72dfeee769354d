"""The demo dataset: photographs that ship inside scikit-image's wheel, cut into 64×64 crops.

No network: every photo is a file inside the installed ``skimage/data`` package. Training and
validation use different photographs (validation: ``chelsea`` the cat and ``coffee``), so
validation measures reconstruction of unseen pictures, not of overlapping crops.

Each photo is resized so its short side is 64, 96, 128, 192, 256 and 384 px (only sizes up to
its own short side; no upscaling beyond the original), and every scale is cut into a regular
grid of 64×64 crops at stride 32. Keys name photo, scale (short side), row and column:
``astronaut_s096_r0032_c0064``. Contents are deterministic (same bytes on every build).

The shards are built once into ``CACHE/demo-v1/{train,val}/`` (CACHE: the ``cache_dir``
argument, else ``$RVQ_CACHE``, else ``~/.cache/rvq``) and reused afterwards. The build happens
in a temporary folder that is renamed into place only when complete (with ``complete.json``
holding the counts), so an interrupted build is never used.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..files import user_cache
from .format import DataError, shard_pattern, write_shards

VERSION = "demo-v1"
CROP, STRIDE = 64, 32
SCALES = (64, 96, 128, 192, 256, 384)
VAL_PHOTOS = ("chelsea", "coffee")
TRAIN_SHARDS, VAL_SHARDS = 16, 8  # enough shards to split across ranks × workers
MARKER = "complete.json"


@dataclass(frozen=True)
class DemoShards:
    """Where the demo shards are: brace patterns for ``data.train`` / ``data.val``."""

    train: str
    val: str
    root: Path
    train_count: int
    val_count: int


def bundled_photos() -> dict[str, Callable[[], np.ndarray]]:
    """Name -> loader of each photograph the demo sets are cut from (inside scikit-image's wheel)."""
    try:
        from skimage import data
    except ImportError:
        raise DataError("The demo dataset is cut from the photographs shipped with scikit-image, which is not "
                        "installed. Install it (`pip install scikit-image`, or `pip install -c constraints.txt "
                        "-e .` in the rvq repository) or point data.train/data.val at your own shards.") from None
    return {
        "astronaut": data.astronaut, "chelsea": data.chelsea, "coffee": data.coffee, "rocket": data.rocket,
        "hubble": data.hubble_deep_field, "ihc": data.immunohistochemistry, "retina": data.retina,
        "motorcycle_left": lambda: data.stereo_motorcycle()[0],
        "motorcycle_right": lambda: data.stereo_motorcycle()[1],
        "colorwheel": data.colorwheel, "camera": data.camera, "moon": data.moon, "coins": data.coins,
        "brick": data.brick, "grass": data.grass, "gravel": data.gravel,
    }


def photo_rgb(a: np.ndarray) -> Image.Image:
    """A skimage photo (H, W) or (H, W, 3|4), uint8, as an RGB image."""
    a = np.asarray(a)
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)  # grayscale -> RGB, (H, W, 3)
    return Image.fromarray(np.ascontiguousarray(a[..., :3]).astype(np.uint8), "RGB")


def _crops(name: str, photo: Image.Image) -> Iterator[dict]:
    """Every grid crop of every scale of one photo, as samples with PNG bytes."""
    w, h = photo.size
    for s in SCALES:
        if s > min(w, h):
            break
        size = (s, max(s, round(h * s / w))) if w <= h else (max(s, round(w * s / h)), s)
        a = np.asarray(photo.resize(size, Image.Resampling.LANCZOS))  # (H, W, 3)
        for r in range(0, a.shape[0] - CROP + 1, STRIDE):
            for c in range(0, a.shape[1] - CROP + 1, STRIDE):
                crop = a[r : r + CROP, c : c + CROP]  # (64, 64, 3)
                buf = io.BytesIO()
                Image.fromarray(crop).save(buf, format="PNG")
                yield {"__key__": f"{name}_s{s:03d}_r{r:04d}_c{c:04d}", "png": buf.getvalue(),
                       "json": {"photo": name, "scale": s, "row": r, "col": c}}


def _build(tmp: Path) -> dict:
    photos = bundled_photos()
    counts = {}
    for split, n_shards in (("train", TRAIN_SHARDS), ("val", VAL_SHARDS)):
        names = [n for n in photos if (n in VAL_PHOTOS) == (split == "val")]
        samples = [s for n in names for s in _crops(n, photo_rgb(photos[n]()))]  # a few MB of PNGs
        if split == "train":  # mix photos across shards (the stream's shuffle buffer is local)
            random.Random(0).shuffle(samples)
        per_shard = -(-len(samples) // n_shards)  # ceil: exactly n_shards shards
        shards = write_shards(samples, tmp / split, prefix=f"demo-{split}", max_count=per_shard)
        counts[split] = {"samples": len(samples), "shards": len(shards), "photos": names}
    (tmp / MARKER).write_text(json.dumps(counts, indent=1))
    tmp.chmod(0o755)  # mkdtemp made it private; the cache may be shared
    return counts


def default_cache() -> Path:
    """Where the demo sets are built: ``$RVQ_CACHE``, else ``$XDG_CACHE_HOME/rvq``, else ``~/.cache/rvq``."""
    return Path(os.environ.get("RVQ_CACHE") or user_cache("rvq")).expanduser()


def demo_result(root: Path, counts: dict) -> DemoShards:
    """The ``DemoShards`` of a demo set built into ``root`` (``counts``: its completion marker)."""
    return DemoShards(
        train=shard_pattern(root / "train", "demo-train", counts["train"]["shards"]),
        val=shard_pattern(root / "val", "demo-val", counts["val"]["shards"]),
        root=root, train_count=counts["train"]["samples"], val_count=counts["val"]["samples"])


def _complete(root: Path) -> dict | None:
    try:
        return json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None


def build_cached(cache: Path, name: str, build: Callable[[Path], dict]) -> tuple[Path, dict]:
    """``cache/name``, built by ``build(folder) -> counts`` (which writes the completion marker)
    in a temporary folder renamed into place when complete; reused once complete."""
    root = cache / name
    if (counts := _complete(root)) is not None:
        return root, counts
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-building-", dir=cache))
    try:
        counts = build(tmp)
        if root.exists():  # an incomplete leftover (no marker): move it aside, then drop it
            trash = Path(tempfile.mkdtemp(prefix=f".{name}-stale-", dir=cache))
            os.replace(root, trash / "old")
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.rename(tmp, root)
        except OSError:  # another process finished first: use its complete copy
            if (counts := _complete(root)) is None:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root, counts


def demo_shards(cache_dir: str | os.PathLike | None = None) -> DemoShards:
    """The demo dataset's shards, built on first use (a few seconds) and reused afterwards."""
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache()
    root, counts = build_cached(cache, VERSION, _build)
    return demo_result(root, counts)
