"""A tiny TimeSformer-VQ trained by the ordinary engine on mp4 shards the test writes (decoded by
decord), with the per-frame perceptual and adversarial terms of Table 11."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from rvq_cli.config import load_recipe
from rvq_cli.data import write_shards
from rvq_cli.data.video import encode_mp4
from rvq_cli.evaluate import load_tokenizer
from rvq_cli.train import train
from rvq_cli.train.objective import frames

RECIPE = """
data: {{train: '{train}', val: '{val}', image_size: 16, frames: 4, frame_stride: 2, num_workers: 0, shuffle_buffer: 4}}
model:
  name: timesformer
  timesformer: {{patch_size: 4, dim: 32, depth: 1, heads: 4, mlp_dim: 64}}
  quantizer: {{codebook_size: 32, dim: 8, lookup: cosine, estimator: {estimator}}}
optim: {{lr: 1.0e-3}}
train: {{steps: 3, batch_size: 2, log_every: 1, sample_every: 3, ckpt_every: 3}}
output: {{dir: '{out}'}}
"""


def moving_square(seed: int, n: int = 10, size: int = 24) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = np.full((n, size, size, 3), rng.integers(0, 200, 3), np.uint8)
    for t in range(n):
        x = (3 * t + seed) % (size - 6)
        a[t, 8:14, x : x + 6] = 255
    return a


@pytest.fixture(scope="module")
def video_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("video")
    samples = [{"__key__": f"v{i:03d}", "mp4": encode_mp4(moving_square(i), fps=8), "json": {"fps": 8, "frames": 10}}
               for i in range(6)]
    write_shards(samples[:4], root / "train", max_count=2)
    write_shards(samples[4:], root / "val", max_count=2)
    return str(root / "train" / "shard-{000000..000001}.tar"), str(root / "val" / "shard-000000.tar")


def recipe(tmp_path, video_shards, estimator="rotation", out="run"):
    path = tmp_path / "video.yaml"
    path.write_text(RECIPE.format(train=video_shards[0], val=video_shards[1], estimator=estimator,
                                  out=tmp_path / out))
    return path


def test_frames_flattens_clips_frame_by_frame():
    x = torch.arange(2 * 3 * 4 * 2 * 2, dtype=torch.float32).reshape(2, 3, 4, 2, 2)
    f = frames(x)
    assert f.shape == (8, 3, 2, 2)
    assert torch.equal(f[5], x[1, :, 1])  # clip 1, frame 1
    img = torch.zeros(2, 3, 4, 4)
    assert frames(img) is img


@pytest.mark.parametrize("estimator", ["rotation", "ste", "hessian", "exact", "gumbel"])
def test_tiny_timesformer_vq_trains_three_steps(tmp_path, video_shards, estimator):
    res = train(load_recipe(recipe(tmp_path, video_shards, estimator)), quiet=True)
    rows = [json.loads(line) for line in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) and 0 < r["usage"] <= 1 for r in rows)
    assert rows[-1]["skipped"] == 0
    grid = Image.open(res.run_dir / "samples" / "step-00000003.png")
    assert grid.size == (4 * 18 + 2, 4 * 18 + 2)  # 4 frames across; clips 0 and 1, original above reconstruction
    tok = load_tokenizer(res.run_dir)
    assert tok.model.spatial_dims == 3 and tok.recipe.model.video
    x = torch.rand(1, 3, 4, 16, 16) * 2 - 1
    with torch.no_grad():
        tokens = tok.model.encode(x)
        assert tokens.shape == (1, 4, 4, 4)
        assert torch.equal(tok.model.decode_indices(tokens), tok.model(x).reconstruction)


def test_video_vqgan_objective_is_per_frame(tmp_path, video_shards, vgg_file):
    over = ["loss.gan.weight=0.1", "loss.gan.start=1", "loss.gan.layers=1", "loss.gan.channels=8",
            "loss.perceptual_weight=0.1", f"loss.perceptual_weights={vgg_file}", "loss.gaussian_weight=1.0"]
    res = train(load_recipe(recipe(tmp_path, video_shards), over), quiet=True)
    last = json.loads((res.run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["perceptual"] > 0 and last["d_loss"] > 0 and last["adaptive_weight"] > 0


def test_video_recipe_checks():
    from rvq_cli.config import Recipe, check_recipe

    r = Recipe.model_validate({"model": {"name": "timesformer", "timesformer": {"patch_size": 5, "dim": 30,
                                                                                "heads": 4}},
                               "data": {"image_size": 64}})
    paths = {p.path for p in check_recipe(r, check_paths=False)}
    assert paths == {"data.image_size", "model.timesformer.heads", "model.timesformer.dim"}


def test_video_progress_counts_clips():
    from rvq_cli.train.progress import format_metrics

    m = {"step": 1, "loss": 0.5, "rec_loss": 0.4, "usage": 0.1, "perplexity": 3.0, "quant_error": 0.01, "lr": 1e-3,
         "images_per_s": 12.5}
    assert "12.5 clip/s" in format_metrics(m, "clip") and "12.5 img/s" in format_metrics(m)
