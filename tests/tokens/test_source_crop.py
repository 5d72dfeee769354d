"""The images rvq encode tokenizes are the recipe's evaluation view: short side resized then the
centre for data.crop "random" recipes, the stored image's centre for "center" recipes (the
official Table 1 pipeline), the same view rvq eval and training use."""

import numpy as np
import torch
from PIL import Image

from rvq_cli.data.images import center_crop, center_crop_native, to_batch
from rvq_cli.tokens.source import plan_source, unit_batches


def test_encode_views_follow_the_recipes_crop(tmp_path):
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (20, 28, 3), dtype=np.uint8) for _ in range(3)]
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(tmp_path / f"im{i}.png")
    src = plan_source(str(tmp_path), per_shard=10)
    for crop, view in (("random", center_crop), ("center", center_crop_native)):
        batch = next(iter(unit_batches(src.units, 16, 8, 0, crop=crop)))
        want = to_batch([view(Image.fromarray(a), 16) for a in arrays])
        assert torch.equal(batch["x"], want), crop
    native = next(iter(unit_batches(src.units, 16, 8, 0, crop="center")))["x"]
    assert torch.equal(native[0], to_batch([arrays[0][2:18, 6:22]])[0])  # the central 16×16, no resize
