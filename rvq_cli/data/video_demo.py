"""The demo video set: sprites cut from scikit-image's bundled photographs, moving over a
slowly panning photo background. No network; deterministic (same bytes on every build).

Each clip (``frames`` frames of ``size``×``size``, 8 fps) has a background window of one photo
(resized so its short side is 2×``size``) panning at a constant integer velocity, and 1–3
sprites: 12–24 px square or disc-shaped crops of other photos, each moving at constant
velocity and bouncing off the frame edges. Training clips use the training photos of the image
demo, validation clips only its validation photos (``chelsea``, ``coffee``), so validation
measures unseen pictures. Keys: ``clip_000123``; ``json`` holds fps, frames and the photos used.

Built once into ``CACHE/demo-video-v1/{train,val}/`` (CACHE: ``cache_dir``, else ``$RVQ_CACHE``,
else ``~/.cache/rvq``); non-default sizes go to ``demo-video-v1-T{train}-V{val}-F{frames}-S{size}``.
The build happens in a temporary folder renamed into place only when complete
(``complete.json`` holds the counts), so an interrupted build is never used.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from .demo import MARKER, VAL_PHOTOS, DemoShards, build_cached, bundled_photos, default_cache, demo_result, photo_rgb
from .format import write_shards
from .mp4 import encode_mp4

VERSION = "demo-video-v1"
FPS = 8
TRAIN_CLIPS, VAL_CLIPS, FRAMES, SIZE = 384, 48, 16, 64
TRAIN_SHARDS, VAL_SHARDS = 8, 4  # enough shards to split across ranks × workers


def _backgrounds(photos: dict, names: list[str], size: int) -> dict[str, np.ndarray]:
    """Each photo as uint8 (H, W, 3) with short side 2·size (room to pan)."""
    out = {}
    for n in names:
        im = photo_rgb(photos[n]())
        s = 2 * size / min(im.size)
        out[n] = np.asarray(im.resize((max(2 * size, round(im.width * s)), max(2 * size, round(im.height * s))),
                                      Image.Resampling.LANCZOS))
    return out


def _clip(pics: dict[str, np.ndarray], rng: np.random.Generator, frames: int, size: int) -> tuple[np.ndarray, dict]:
    """One clip: uint8 (frames, size, size, 3) and its metadata."""
    names = sorted(pics)
    bg_name = names[rng.integers(len(names))]
    bg = pics[bg_name]
    # Background: a size×size window moving at (vy, vx) px/frame, kept inside the photo.
    v = rng.integers(-2, 3, 2)
    room = np.array(bg.shape[:2]) - size - np.abs(v) * (frames - 1)
    if (room < 0).any():  # a long clip would pan off the photo: keep it still
        v, room = np.zeros(2, int), np.array(bg.shape[:2]) - size
    p0 = rng.integers(0, np.maximum(room, 0) + 1) + np.where(v < 0, -v * (frames - 1), 0)
    video = np.stack([bg[y : y + size, x : x + size] for y, x in (p0 + t * v for t in range(frames))])  # (T, S, S, 3)
    sprites = []
    for _ in range(rng.integers(1, 4)):
        name = names[rng.integers(len(names))]
        src, k = pics[name], int(rng.integers(12, 25))
        y, x = rng.integers(0, src.shape[0] - k + 1), rng.integers(0, src.shape[1] - k + 1)
        patch = src[y : y + k, x : x + k]  # (k, k, 3)
        yy, xx = np.mgrid[:k, :k] - (k - 1) / 2
        mask = (yy**2 + xx**2 <= (k / 2) ** 2) if rng.random() < 0.5 else np.ones((k, k), bool)
        pos = rng.uniform(0, size - k, 2)
        vel = rng.uniform(1.0, 4.0, 2) * rng.choice([-1, 1], 2)
        sprites.append((patch, mask, pos, vel, k))
        for t in range(frames):
            # bounce: reflect the unconstrained path into [0, size - k]
            q = np.abs((pos + t * vel) % (2 * (size - k)))
            q = np.where(q > size - k, 2 * (size - k) - q, q).round().astype(int)
            region = video[t, q[0] : q[0] + k, q[1] : q[1] + k]
            region[mask] = patch[mask]
    meta = {"fps": FPS, "frames": frames, "background": bg_name, "sprites": len(sprites)}
    return video, meta


def _build(tmp: Path, train_clips: int, val_clips: int, frames: int, size: int) -> dict:
    photos, counts = bundled_photos(), {}
    for split, n, n_shards in (("train", train_clips, TRAIN_SHARDS), ("val", val_clips, VAL_SHARDS)):
        names = [p for p in photos if (p in VAL_PHOTOS) == (split == "val")]
        pics = _backgrounds(photos, names, size)
        rng = np.random.default_rng([0 if split == "train" else 1, n, frames, size])
        samples = []
        for i in range(n):
            video, meta = _clip(pics, rng, frames, size)
            samples.append({"__key__": f"clip_{i:06d}", "mp4": encode_mp4(video, FPS), "json": meta})
        per_shard = -(-n // min(n_shards, n))  # ceil
        shards = write_shards(samples, tmp / split, prefix=f"demo-{split}", max_count=per_shard)
        counts[split] = {"samples": n, "shards": len(shards), "photos": names, "frames": frames, "size": size}
    (tmp / MARKER).write_text(json.dumps(counts, indent=1))
    tmp.chmod(0o755)  # mkdtemp made it private; the cache may be shared
    return counts


def demo_video_shards(cache_dir: str | os.PathLike | None = None, *, train_clips: int = TRAIN_CLIPS,
                      val_clips: int = VAL_CLIPS, frames: int = FRAMES, size: int = SIZE) -> DemoShards:
    """The demo video shards (``train``/``val`` brace patterns and counts), built on first use
    and reused afterwards. ``size`` must be even and at least 32."""
    for name, v, lo in (("train_clips", train_clips, 1), ("val_clips", val_clips, 1), ("frames", frames, 1),
                        ("size", size, 32)):
        if not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an integer ≥ {lo}, got {v!r}")
    if size % 2:
        raise ValueError(f"size must be even (H.264 yuv420p), got {size}")
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache()
    default = (train_clips, val_clips, frames, size) == (TRAIN_CLIPS, VAL_CLIPS, FRAMES, SIZE)
    name = VERSION if default else f"{VERSION}-T{train_clips}-V{val_clips}-F{frames}-S{size}"
    root, counts = build_cached(cache, name, lambda tmp: _build(tmp, train_clips, val_clips, frames, size))
    return demo_result(root, counts)
