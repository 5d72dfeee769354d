"""What the end-to-end tests of every folder share: the tiny recipe they train (a few seconds on
a CPU) and random PNG images. Imported as ``from tiny import TINY, png`` (tests/ is on sys.path
through tests/conftest.py)."""

import io

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
