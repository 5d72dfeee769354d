"""Small real images and shards for the data tests."""

import os

os.environ.setdefault("RVQ_COMPILE", "never")

import io
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from rvq_cli.data import write_shards


def encode(a: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a, mode).save(buf, format=fmt)
    return buf.getvalue()


def image(seed: int, h: int = 20, w: int = 28, channels: int = 3) -> np.ndarray:
    """A random uint8 image, different for every seed."""
    shape = (h, w, channels) if channels > 1 else (h, w)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def samples(n: int, start: int = 0, label: bool = True, **kw) -> list[dict]:
    out = []
    for i in range(start, start + n):
        s = {"__key__": f"img{i:04d}", "png": encode(image(i, **kw))}
        if label:
            s["cls"], s["json"] = i % 3, {"index": i}
        out.append(s)
    return out


@pytest.fixture
def gen():
    """Image and sample generators: gen.encode(array, fmt), gen.image(seed, h, w), gen.samples(n)."""
    return SimpleNamespace(encode=encode, image=image, samples=samples)


@pytest.fixture
def make_shards(tmp_path):
    """make_shards(n_samples, max_count, name) -> brace pattern of freshly written shards."""

    def make(n: int, max_count: int, name: str = "ds", extra: list[dict] = ()) -> str:
        paths = write_shards(samples(n) + list(extra), tmp_path / name, max_count=max_count)
        return str(tmp_path / name / f"shard-{{000000..{len(paths) - 1:06d}}}.tar")

    return make
