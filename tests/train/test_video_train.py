"""A tiny TimeSformer-VQ trained by the ordinary engine on mp4 shards the test writes (decoded by
decord), with the per-frame perceptual and adversarial terms of Table 11."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from rvq_cli.config import load_recipe
from rvq_cli.grids import frames
from rvq_cli.runs import load_tokenizer
from rvq_cli.training import train
from tiny import TINY_VIDEO


def recipe(tmp_path, video_shards, estimator="rotation", out="run"):
    path = tmp_path / "video.yaml"
    path.write_text(TINY_VIDEO.format(train=video_shards[0], val=video_shards[1], estimator=estimator,
                                      out=tmp_path / out))
    return path


def test_frames_flattens_clips_frame_by_frame():
    x = torch.arange(2 * 3 * 4 * 2 * 2, dtype=torch.float32).reshape(2, 3, 4, 2, 2)
    f = frames(x)
    assert f.shape == (8, 3, 2, 2)
    assert torch.equal(f[5], x[1, :, 1])  # clip 1, frame 1
    img = torch.zeros(2, 3, 4, 4)
    assert frames(img) is img


@pytest.mark.parametrize("estimator", ["rotation", "ste", "hessian", "exact", "gumbel", "diveq", "sf_diveq", "ibq"])
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
    from rvq_cli.training.progress import format_metrics

    m = {"step": 1, "loss": 0.5, "rec_loss": 0.4, "usage": 0.1, "perplexity": 3.0, "quant_error": 0.01, "lr": 1e-3,
         "images_per_s": 12.5}
    assert "12.5 clip/s" in format_metrics(m, "clip") and "12.5 img/s" in format_metrics(m)
