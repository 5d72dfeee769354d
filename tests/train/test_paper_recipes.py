"""Every shipped paper recipe, shrunk to tiny dimensions, trains on CPU past its discriminator
start: the recipe's structure (model family, lookup, codebook update, loss terms, GAN) runs as
written; only sizes, data and length are overridden."""

from pathlib import Path

import pytest

from rvq_cli.config import load_recipe
from rvq_cli.train import train
from test_train import shards  # noqa: F401  (fixture)
from test_video_train import video_shards  # noqa: F401  (fixture)

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
            over += ["loss.gan.stylegan2.max_channels=8"] + (["loss.gan.r1_every=1"] if recipe.loss.gan.r1_gamma else [])
        else:
            over += ["loss.gan.channels=8"]
    return over


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.stem)
def test_paper_recipe_trains_tiny(path, tmp_path, shards, video_shards, vgg_file):  # noqa: F811
    recipe = load_recipe(path, check_paths=False)
    train_set, val_set = video_shards if recipe.model.video else (shards["train"], shards["val"])
    over = tiny(recipe) + [f"data.train={train_set}", f"data.val={val_set}",
                           f"output.dir={tmp_path / 'run'}", f"loss.perceptual_weights={vgg_file}"]
    res = train(load_recipe(path, over), quiet=True)
    assert res.step == 2
    last = res.last_metrics
    assert last["rec_loss"] >= 0 and last["usage"] > 0
    if recipe.loss.gan.weight > 0:
        assert last["d_loss"] > 0 and last["adaptive_weight"] > 0  # step 2 is past the start
        assert last.get("r1", 1.0) > 0  # R1, where the recipe has it, ran on that step
    if recipe.loss.perceptual_weight > 0:
        assert last["perceptual"] > 0


def test_there_is_a_recipe_for_every_image_setting_of_the_paper():
    names = {p.stem for p in PAPER}
    assert names >= {"vqvae_cosine_1024x32", "vqvae_euclidean_1024x32", "vqvae_cosine_8192x3",
                     "vqvae_euclidean_8192x3", "vqgan_f16_imagenet", "vqgan_f16_faceshq", "vqgan_f4", "vqgan_f8",
                     "vit_vqgan_small"}
