"""What the end-to-end tests of every folder share: the tiny image and video recipes they train
(a few seconds on a CPU), random PNG images and moving-square clips, and the ``rvq`` executable.
Imported as ``from tiny import TINY, png`` (tests/ is on sys.path through pyproject.toml's
``[tool.pytest.ini_options] pythonpath``). The shards they train on are fixtures of
tests/conftest.py (``shards``, ``video_shards``)."""

import io
import os
import shutil
import sys

import numpy as np
from PIL import Image

# format with train=, val=, out=; 16×16 crops -> 8×8 tokens of a 16-code codebook
TINY = """
# tiny test recipe
data: {{train: '{train}', val: '{val}', image_size: 16, num_workers: 0, shuffle_buffer: 8}}
model:
  encoder: {{ch: 8, ch_mult: [1, 2], num_res_blocks: 1, attn_resolutions: [], z_channels: 4, norm_groups: 4}}
  quantizer: {{codebook_size: 16, dim: 4}}
optim: {{lr: 1.0e-3}}
train: {{steps: 3, batch_size: 4, log_every: 1, sample_every: 2, ckpt_every: 2, keep_last: 2}}
output: {{dir: '{out}'}}
"""


def png(seed: int, h: int = 20, w: int = 20) -> bytes:
    """A random RGB image as PNG bytes, different for every seed."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


# format with train=, val=, estimator=, out=; 16×16 crops of 4-frame clips -> 4×4×4 tokens of 32 codes
TINY_VIDEO = """
data: {{train: '{train}', val: '{val}', image_size: 16, frames: 4, frame_stride: 2, num_workers: 0, shuffle_buffer: 4}}
model:
  name: timesformer
  timesformer: {{patch_size: 4, dim: 32, depth: 1, heads: 4, mlp_dim: 64}}
  quantizer: {{codebook_size: 32, dim: 8, lookup: cosine, estimator: {estimator}}}
optim: {{lr: 1.0e-3}}
train: {{steps: 3, batch_size: 2, log_every: 1, sample_every: 3, ckpt_every: 3}}
output: {{dir: '{out}'}}
"""

RVQ = shutil.which("rvq") or os.path.join(os.path.dirname(sys.executable), "rvq")


def recipe_file(tmp_path, shards, out="run"):
    """TINY on the ``shards`` fixture's train and val sets, written to tmp_path/tiny.yaml, output in tmp_path/out."""
    p = tmp_path / "tiny.yaml"
    p.write_text(TINY.format(train=shards["train"], val=shards["val"], out=tmp_path / out))
    return p


def moving_square(seed: int, n: int = 10, size: int = 24) -> np.ndarray:
    """n RGB frames (n, size, size, 3): a white 6×6 square moving 3 px a frame over a seeded colour."""
    rng = np.random.default_rng(seed)
    a = np.full((n, size, size, 3), rng.integers(0, 200, 3), np.uint8)
    for t in range(n):
        x = (3 * t + seed) % (size - 6)
        a[t, 8:14, x : x + 6] = 255
    return a
