"""VQGAN training: LPIPS + PatchGAN past the discriminator start, resume, gradient accumulation
for generator and discriminator, and two CPU processes; ViT-VQGAN's StyleGAN2 with lazy R1."""

import json
import math
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rvq_cli.config import load_recipe
from rvq_cli.training import TrainingError, train
from tiny import RVQ, recipe_file

GAN = ["loss.gan.weight=0.1", "loss.gan.start=2", "loss.gan.layers=2", "loss.gan.channels=8"]


def metrics(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def test_vqgan_objective_trains_past_the_discriminator_start(tmp_path, shards, vgg_file):
    path = recipe_file(tmp_path, shards)
    over = GAN + ["train.steps=4", "loss.perceptual_weight=0.1", f"loss.perceptual_weights={vgg_file}",
                  "loss.laplace_weight=0.1", "loss.gaussian_weight=1.0"]
    res = train(load_recipe(path, over), quiet=True)
    rows = metrics(res.run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        assert r["perceptual"] > 0 and r["laplace"] > 0 and r["gaussian"] > 0
        on = r["step"] > 2  # optimizer steps 0, 1 (logged as 1, 2) run before the start
        assert (r["d_loss"] > 0) == on and (r["adaptive_weight"] > 0) == on, r
    ckpt = res.run_dir / "ckpt-00000004"
    disc = load_file(str(ckpt / "discriminator.safetensors"))
    assert any(k.endswith("weight") for k in disc)
    opt = torch.load(ckpt / "optimizer.pt", weights_only=True)
    assert opt["disc_optimizer"]["state"]  # Adam moments exist: the discriminator stepped


def assert_resume_is_bit_identical(tmp_path, shards, over: list[str], split: int, steps: int) -> None:
    """Training ``steps`` straight and training ``split`` steps, then resuming to ``steps``, end with
    the same tokenizer and discriminator weights, bit for bit."""
    straight = train(load_recipe(recipe_file(tmp_path, shards, out="straight"), over + [f"train.steps={steps}"]),
                     quiet=True)
    path = recipe_file(tmp_path, shards, out="split")
    first = train(load_recipe(path, over + [f"train.steps={split}"]), quiet=True)
    second = train(load_recipe(path, over + [f"train.steps={steps}"]), run_dir=first.run_dir, resume=True, quiet=True)
    for name in ("model.safetensors", "discriminator.safetensors"):
        a = load_file(str(straight.run_dir / f"ckpt-{steps:08d}" / name))
        b = load_file(str(second.run_dir / f"ckpt-{steps:08d}" / name))
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)


def test_gan_run_resumes_bit_identically(tmp_path, shards):
    assert_resume_is_bit_identical(tmp_path, shards, GAN + ["train.ckpt_every=100"], split=3, steps=4)


def test_accumulation_equals_one_big_batch_for_generator_and_discriminator(tmp_path, shards):
    """group norm (no batch statistics) and a fixed adversarial weight: both depend on how a batch
    is split, by definition; everything else must not."""
    common = GAN + ["loss.gan.start=0", "loss.gan.norm=group", "loss.gan.adaptive=false", "train.steps=2",
                    "model.quantizer.update=learned", "train.grad_clip=0", "optim.eps=1e-3"]
    big = train(load_recipe(recipe_file(tmp_path, shards, out="big"),
                            common + ["train.batch_size=8", "train.grad_accum=1"]), quiet=True)
    acc = train(load_recipe(recipe_file(tmp_path, shards, out="acc"),
                            common + ["train.batch_size=4", "train.grad_accum=2"]), quiet=True)
    for name in ("model.safetensors", "discriminator.safetensors"):
        a = load_file(str(big.run_dir / "ckpt-00000002" / name))
        b = load_file(str(acc.run_dir / "ckpt-00000002" / name))
        for k in a:
            if k != "quantize.cluster_size":  # a usage EMA updated per micro-batch, by design
                torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=f"{name}: {k}")


def test_two_processes_past_the_discriminator_start_stay_identical(tmp_path, shards, run_two):
    path = recipe_file(tmp_path, shards, out="dist")
    text = path.read_text().replace("steps: 3", "steps: 4")
    text += "loss: {gan: {weight: 0.1, start: 2, layers: 2, channels: 8}}\n"
    path.write_text(text)
    run_two(path, tmp_path, 29547)
    for name in ("rank", "disc"):
        a, b = (load_file(str(tmp_path / f"{name}{r}.safetensors")) for r in (0, 1))
        for k in a:
            if "running_" in k:  # BatchNorm statistics of the last local forward (not used in training;
                continue  # DDP broadcasts rank 0's at every forward, and checkpoints hold rank 0's)
            assert torch.equal(a[k], b[k]), (name, k)
    rows = metrics(tmp_path / "dist")
    assert rows[-1]["d_loss"] > 0


def test_missing_vgg_weights_stop_before_anything_starts(tmp_path, shards, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.delenv("RVQ_VGG16_WEIGHTS", raising=False)
    path = recipe_file(tmp_path, shards, out="never")
    with pytest.raises(TrainingError, match="vgg16-397923af.pth"):
        train(load_recipe(path, ["loss.perceptual_weight=0.1"]), quiet=True)
    assert not (tmp_path / "never").exists()
    env = dict(os.environ, TORCH_HOME=str(tmp_path / "empty"), RVQ_COMPILE="never")
    env.pop("RVQ_VGG16_WEIGHTS", None)
    res = subprocess.run([RVQ, "train", str(path), "loss.perceptual_weight=0.1"], capture_output=True, text=True,
                         timeout=300, env=env)
    assert res.returncode == 2 and res.stderr.startswith("error:") and "Traceback" not in res.stderr


def test_tiny_vit_vqgan_trains_past_the_start_and_round_trips(tmp_path, shards, vgg_file):
    from rvq_cli.runs import load_tokenizer

    vit = ["model.name=vit", "model.vit.patch_size=4", "model.vit.dim=32", "model.vit.depth=1", "model.vit.heads=4",
           "model.vit.mlp_dim=64", "model.quantizer.dim=8", "model.quantizer.lookup=cosine",
           "model.quantizer.update=learned", "model.quantizer.beta=0.25"]
    over = vit + GAN + ["loss.gan.start=1", "train.steps=3", "loss.perceptual_weight=0.1",
                        f"loss.perceptual_weights={vgg_file}", "loss.laplace_weight=0.1", "loss.gaussian_weight=1.0"]
    res = train(load_recipe(recipe_file(tmp_path, shards), over), quiet=True)
    rows = metrics(res.run_dir)
    assert rows[-1]["d_loss"] > 0 and rows[-1]["adaptive_weight"] > 0
    tok = load_tokenizer(res.run_dir)
    assert type(tok.model.encoder).__name__ == "ViTEncoder"
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(tok.model.decode_indices(tok.model.encode(x)), tok.model(x).reconstruction)


def test_vit_recipe_checks():
    from rvq_cli.config import Recipe, check_recipe

    r = Recipe.model_validate({"model": {"name": "vit", "vit": {"patch_size": 5, "dim": 30, "heads": 4}},
                               "data": {"image_size": 64}})
    paths = {p.path for p in check_recipe(r, check_paths=False)}
    assert paths == {"data.image_size", "model.vit.heads", "model.vit.dim"}


def test_gan_under_bf16_mixed_precision(tmp_path, shards, vgg_file):
    over = GAN + ["loss.gan.start=1", "train.steps=3", "train.precision=bf16", "loss.perceptual_weight=0.1",
                  f"loss.perceptual_weights={vgg_file}"]
    res = train(load_recipe(recipe_file(tmp_path, shards), over), quiet=True)
    rows = metrics(res.run_dir)
    for k in ("loss", "d_loss", "g_loss", "adaptive_weight", "perceptual"):
        assert all(r[k] == r[k] and abs(r[k]) < 1e6 for r in rows), k  # finite
    assert rows[-1]["d_loss"] > 0


# ViT-VQGAN's adversarial setup (Table 4, enhancing-transformers), with tiny widths
STYLE = ["loss.gan.weight=0.1", "loss.gan.discriminator=stylegan2", "loss.gan.loss=non_saturating",
         "loss.gan.adaptive=false", "loss.gan.stylegan2.max_channels=8", "loss.gan.r1_gamma=10", "loss.gan.r1_every=2",
         "loss.gan.optimizer=adamw", "loss.gan.betas=[0.9,0.99]", "loss.gan.weight_decay=1e-4"]


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_stylegan2_with_lazy_r1_trains(tmp_path, shards, precision):
    res = train(load_recipe(recipe_file(tmp_path, shards), STYLE + [f"train.precision={precision}"]), quiet=True)
    rows = metrics(res.run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert [r["r1"] > 0 for r in rows] == [True, False, True]  # optimizer steps 0, 1, 2: R1 on 0 and 2
    for r in rows:
        assert all(math.isfinite(r[k]) for k in ("loss", "d_loss", "g_loss", "r1")), r
        assert r["d_loss"] > 0 and r["g_loss"] > 0 and r["adaptive_weight"] == 1.0
    ckpt = res.run_dir / "ckpt-00000003"
    assert "final_linear.1.bias" in load_file(str(ckpt / "discriminator.safetensors"))
    assert torch.load(ckpt / "optimizer.pt", weights_only=True)["disc_optimizer"]["state"]


@pytest.mark.slow
def test_stylegan2_run_resumes_bit_identically(tmp_path, shards):
    assert_resume_is_bit_identical(tmp_path, shards, STYLE + ["train.ckpt_every=100", "loss.gan.r1_every=3"],
                                   split=2, steps=5)


@pytest.mark.slow
def test_two_processes_with_stylegan2_and_r1_stay_identical(tmp_path, shards, run_two):
    path = recipe_file(tmp_path, shards, out="dist")
    text = path.read_text().replace("steps: 3", "steps: 4")
    text += ("loss: {gan: {weight: 0.1, discriminator: stylegan2, loss: non_saturating, adaptive: false, "
             "stylegan2: {max_channels: 8}, r1_gamma: 10, r1_every: 2}}\n")
    path.write_text(text)
    run_two(path, tmp_path, 29548)
    for name in ("rank", "disc"):
        a, b = (load_file(str(tmp_path / f"{name}{r}.safetensors")) for r in (0, 1))
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    rows = metrics(tmp_path / "dist")
    assert [r["r1"] > 0 for r in rows] == [True, False, True, False]
