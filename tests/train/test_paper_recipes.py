"""Every shipped paper recipe, shrunk to tiny dimensions, trains on CPU past its discriminator
start: the recipe's structure (model family, lookup, codebook update, loss terms, GAN) runs as
written; only sizes, data and length are overridden."""

import json
import math
from pathlib import Path

import pytest
from safetensors.torch import load_file

from rvq_cli.config import load_recipe
from rvq_cli.training import train

ROOT = Path(__file__).resolve().parents[2]
PAPER = sorted(p for p in (ROOT / "recipes").glob("*.yaml") if p.name != "quickstart.yaml")


def tiny(recipe) -> list[str]:
    """Overrides that keep the recipe's structure and make it a few seconds on a CPU."""
    over = ["data.image_size=32", "data.num_workers=0", "data.shuffle_buffer=4", "train.steps=2",
            "train.batch_size=2", "train.grad_accum=1", "train.log_every=1", "train.sample_every=1",
            "train.ckpt_every=2"]
    if recipe.model.name == "vit":
        over += ["model.vit.dim=32", "model.vit.depth=1", "model.vit.heads=4", "model.vit.mlp_dim=64"]
    elif recipe.model.name == "timesformer":
        over += ["model.timesformer.dim=32", "model.timesformer.depth=1", "model.timesformer.heads=4",
                 "model.timesformer.mlp_dim=64", "model.timesformer.patch_size=4", "data.frames=4",
                 "data.frame_stride=2"]
    else:
        over += ["model.encoder.ch=8", "model.encoder.num_res_blocks=1", "model.encoder.norm_groups=4",
                 "model.encoder.attn_resolutions=[]"]
    if recipe.loss.gan.weight > 0:
        over += ["loss.gan.start=1"]
        if recipe.loss.gan.discriminator == "stylegan2":  # narrow, and R1 (if any) on the step that runs the GAN
            over += ["loss.gan.stylegan2.max_channels=8"]
            over += ["loss.gan.r1_every=1"] if recipe.loss.gan.r1_gamma else []
        else:
            over += ["loss.gan.channels=8"]
    return over


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.stem)
def test_paper_recipe_trains_tiny(path, tmp_path, shards, video_shards, vgg_file):
    recipe = load_recipe(path, check_paths=False)
    train_set, val_set = video_shards if recipe.model.video else (shards["train"], shards["val"])
    over = tiny(recipe) + [f"data.train={train_set}", f"data.val={val_set}",
                           f"output.dir={tmp_path / 'run'}", f"loss.perceptual_weights={vgg_file}"]
    res = train(load_recipe(path, over), quiet=True)
    assert res.step == 2
    rows = [json.loads(line) for line in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:  # every logged number of both steps is finite
        bad = {k: v for k, v in r.items() if isinstance(v, float) and not math.isfinite(v)}
        assert not bad, (r["step"], bad)
    first, last = rows
    assert last == {k: v for k, v in res.last_metrics.items() if k in last}
    q, loss = recipe.model.quantizer, recipe.loss
    assert last["rec_loss"] > 0 and last["val_rec_loss"] > 0
    # the recipe's codebook: usage is a whole number of its codes, perplexity at most that number
    used = last["usage"] * q.codebook_size
    assert used == pytest.approx(round(used), abs=1e-6) and 1 <= round(used) <= q.codebook_size
    assert last["perplexity"] <= round(used) * (1 + 1e-5)
    # the recipe's β and where it goes: vqvae puts it on the commitment, taming_legacy on the codebook term
    beta = q.beta if q.vq_loss == "vqvae" else 1.0
    for r in rows:
        assert r["commitment"] == pytest.approx(beta * r["quant_error"], rel=1e-4), r["step"]
    # the recipe's loss terms, and only those, are logged
    for key, on in (("perceptual", loss.perceptual_weight > 0), ("gaussian", loss.gaussian_weight > 0),
                    ("laplace", loss.laplace_weight > 0), ("d_loss", loss.gan.weight > 0),
                    ("r1", loss.gan.weight > 0 and loss.gan.r1_gamma > 0)):
        assert (key in last) == on, key
    if loss.perceptual_weight > 0:
        assert last["perceptual"] > 0
    if loss.gan.weight > 0:  # loss.gan.start=1: the first step has no GAN, the second has
        assert first["d_loss"] == first["g_loss"] == first["adaptive_weight"] == 0.0
        assert last["d_loss"] > 0 and last["adaptive_weight"] > 0
        assert last["g_loss"] != 0.0
        if loss.gan.r1_gamma > 0:  # R1 (r1_every=1) ran on that step
            assert first["r1"] == 0.0 and last["r1"] > 0
    # the run is of the recipe as written: its quantizer and loss settings, only sizes overridden
    saved = load_recipe(res.run_dir / "recipe.yaml", check_paths=False)
    assert saved.model.name == recipe.model.name and saved.model.quantizer == q
    sized = {"gan", "perceptual_weights"}, {"start", "channels", "stylegan2", "r1_every"}
    assert {k: v for k, v in saved.loss.model_dump().items() if k not in sized[0]} == \
        {k: v for k, v in loss.model_dump().items() if k not in sized[0]}
    assert {k: v for k, v in saved.loss.gan.model_dump().items() if k not in sized[1]} == \
        {k: v for k, v in loss.gan.model_dump().items() if k not in sized[1]}
    ckpt = res.run_dir / "ckpt-00000002"
    state = load_file(str(ckpt / "model.safetensors"))
    assert tuple(state["quantize.codebook"].shape) == (q.codebook_size, q.dim)
    assert ("quantize.embed_sum" in state) == (q.update == "ema")
    assert (ckpt / "discriminator.safetensors").is_file() == (loss.gan.weight > 0)


def test_there_is_a_recipe_for_every_image_setting_of_the_paper():
    names = {p.stem for p in PAPER}
    assert names >= {"vqvae_cosine_1024x32", "vqvae_euclidean_1024x32", "vqvae_cosine_8192x3",
                     "vqvae_euclidean_8192x3", "vqgan_f16_imagenet", "vqgan_f16_faceshq", "vqgan_f4", "vqgan_f8",
                     "vit_vqgan_small"}
