"""Training end to end on shards the test writes: run directory, resume equivalence, errors."""

import json
import os
import subprocess

os.environ.setdefault("RVQ_COMPILE", "never")

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from rvq_cli.config import RecipeError, load_recipe
from rvq_cli.data import write_shards
from rvq_cli.training import TrainingError, train
from tiny import RVQ, TINY, png, recipe_file


def test_cli_trains_three_steps(tmp_path, shards):
    path = recipe_file(tmp_path, shards)
    res = subprocess.run([RVQ, "train", str(path), "--quiet"], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, RVQ_COMPILE="never"))
    assert res.returncode == 0, res.stderr + res.stdout
    run = tmp_path / "run"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3]
    for key in ("loss", "rec_loss", "usage", "perplexity", "quant_error", "fallbacks", "lr", "images_per_s"):
        assert all(np.isfinite(m[key]) for m in lines), key
    assert "val_rec_loss" in lines[1]
    assert sorted(p.name for p in run.glob("ckpt-*")) == ["ckpt-00000002", "ckpt-00000003"]
    ckpt = run / "ckpt-00000003"
    for f in ("model.safetensors", "optimizer.pt", "state.json", "recipe.yaml", "rng-0.safetensors"):
        assert (ckpt / f).is_file(), f
    assert (run / "samples" / "step-00000002.png").is_file()
    assert load_recipe(run / "recipe.yaml", check_paths=False).train.steps == 3
    assert "step 3" in res.stdout


def test_resume_gives_identical_weights(tmp_path, shards):
    path = recipe_file(tmp_path, shards, out="straight")
    straight = train(load_recipe(path, ["train.steps=6", "train.ckpt_every=100"]), quiet=True)
    path2 = recipe_file(tmp_path, shards, out="split")
    first = train(load_recipe(path2, ["train.steps=3", "train.ckpt_every=100"]), quiet=True)
    assert first.step == 3
    second = train(load_recipe(path2, ["train.steps=6", "train.ckpt_every=100"]), run_dir=first.run_dir,
                   resume=True, quiet=True)
    assert second.step == 6
    a = load_file(str(straight.run_dir / "ckpt-00000006" / "model.safetensors"))
    b = load_file(str(second.run_dir / "ckpt-00000006" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_existing_run_is_never_overwritten(tmp_path, shards):
    path = recipe_file(tmp_path, shards)
    train(load_recipe(path, ["train.steps=1"]), quiet=True)
    before = (tmp_path / "run" / "ckpt-00000001" / "model.safetensors").read_bytes()
    with pytest.raises(TrainingError, match="Continue it with resume "):  # from Python: the parameter's name
        train(load_recipe(path, ["train.steps=1"]), quiet=True)
    assert (tmp_path / "run" / "ckpt-00000001" / "model.safetensors").read_bytes() == before


def test_resume_refuses_a_different_recipe(tmp_path, shards):
    path = recipe_file(tmp_path, shards)
    first = train(load_recipe(path, ["train.steps=1"]), quiet=True)
    with pytest.raises(TrainingError, match="model.quantizer.estimator"):
        train(load_recipe(path, ["train.steps=2", "model.quantizer.estimator=ste"]), run_dir=first.run_dir,
              resume=True, quiet=True)


def test_resume_without_checkpoint_is_an_error(tmp_path, shards):
    with pytest.raises(TrainingError, match="no checkpoint"):
        train(load_recipe(recipe_file(tmp_path, shards)), run_dir=tmp_path / "empty", resume=True, quiet=True)


def test_cli_reports_missing_shards_cleanly(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("data: {train: '/nowhere/x-{0..1}.tar', val: null}\n")
    res = subprocess.run([RVQ, "train", str(p)], capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "data.train" in res.stderr and "Traceback" not in res.stderr


def test_nan_loss_stops_with_step_and_last_checkpoint(tmp_path, shards):
    from rvq_cli.training.trainer import Trainer

    recipe = load_recipe(recipe_file(tmp_path, shards), ["train.steps=4", "train.ckpt_every=1"])
    trainer = Trainer(recipe, tmp_path / "run", quiet=True)
    trainer.run()  # 4 good steps, checkpoints at each
    recipe2 = load_recipe(recipe_file(tmp_path, shards), ["train.steps=6", "train.ckpt_every=1"])
    trainer = Trainer(recipe2, tmp_path / "run", resume=True, quiet=True)
    with torch.no_grad():
        trainer.acc.unwrap_model(trainer.model).decoder.conv_out.weight.fill_(float("nan"))
    with pytest.raises(TrainingError, match=r"at step 5.*ckpt-00000004"):
        trainer.run()


def test_corrupt_samples_are_skipped_and_counted(tmp_path):
    samples = [{"__key__": f"img{i:03d}", "png": png(i)} for i in range(12)]
    samples[3]["png"] = b"not a png at all"
    samples[7]["png"] = png(7)[:40]  # truncated
    write_shards(iter(samples), tmp_path / "data", max_count=12)
    pattern = str(tmp_path / "data" / "shard-000000.tar")
    p = tmp_path / "r.yaml"
    p.write_text(TINY.format(train=pattern, val=pattern, out=tmp_path / "run"))
    result = train(load_recipe(p, ["train.steps=6", "train.log_every=6"]), quiet=True)
    assert result.step == 6
    assert result.last_metrics["skipped"] >= 2


@pytest.mark.parametrize("signame, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_ctrl_c_or_sigterm_saves_a_checkpoint_exits_nonzero_and_resumes(tmp_path, shards, signame, code):
    """Ctrl-C and a scheduler's SIGTERM (preemption) both finish the step, save, and exit 128 + the
    signal's number, so `rvq train ... && rvq eval ...` does not evaluate a half run."""
    import signal
    import time

    path = recipe_file(tmp_path, shards)
    cmd = [RVQ, "train", str(path), "train.steps=100000", "train.ckpt_every=100000", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, RVQ_COMPILE="never"))
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.is_file() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.2)
    proc.send_signal(getattr(signal, signame))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "interrupted at step" in out and "--resume" in out and "Traceback" not in err
    assert ("Ctrl-C" if signame == "SIGINT" else "SIGTERM") in out and "done:" not in out
    ckpts = sorted((tmp_path / "run").glob("ckpt-*"))
    assert len(ckpts) == 1
    step = int(ckpts[0].name.split("-")[1])
    assert step >= 2
    res = train(load_recipe(path, [f"train.steps={step + 1}", "train.ckpt_every=100000"]),
                run_dir=tmp_path / "run", resume=True, quiet=True)
    assert res.step == step + 1 and res.exit_code == 0


def test_accumulation_equals_one_big_batch(tmp_path, shards):
    """k micro-batches of b equal one batch of k·b (learned codebook: no per-micro-batch EMA)."""
    # optim.eps: Adam turns rounding noise on zero-gradient weights (attention key biases) into
    # full-size steps; a larger eps keeps the comparison about the accumulation itself
    common = ["train.steps=2", "model.quantizer.update=learned", "train.grad_clip=0", "optim.eps=1e-3"]
    path = recipe_file(tmp_path, shards, out="big")
    big = train(load_recipe(path, common + ["train.batch_size=8", "train.grad_accum=1"]), quiet=True)
    path = recipe_file(tmp_path, shards, out="acc")
    acc = train(load_recipe(path, common + ["train.batch_size=4", "train.grad_accum=2"]), quiet=True)
    a = load_file(str(big.run_dir / "ckpt-00000002" / "model.safetensors"))
    b = load_file(str(acc.run_dir / "ckpt-00000002" / "model.safetensors"))
    for k in a:
        if k != "quantize.cluster_size":  # a usage EMA updated per micro-batch, by design
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


def test_bf16_mixed_precision_trains(tmp_path, shards):
    result = train(load_recipe(recipe_file(tmp_path, shards), ["train.precision=bf16", "train.steps=2"]), quiet=True)
    assert result.step == 2 and np.isfinite(result.last_metrics["loss"])


def test_failed_save_keeps_previous_checkpoint(tmp_path, shards, monkeypatch):
    from rvq_cli import runs as checkpoint

    path = recipe_file(tmp_path, shards)
    train(load_recipe(path, ["train.steps=1"]), quiet=True)
    good = tmp_path / "run" / "ckpt-00000001"
    before = {f.name: f.read_bytes() for f in good.iterdir()}

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", crash)  # dies after the weights, before the rest
    with pytest.raises(OSError, match="disk full"):
        train(load_recipe(path, ["train.steps=2"]), run_dir=tmp_path / "run", resume=True, quiet=True)
    assert {f.name: f.read_bytes() for f in good.iterdir()} == before
    assert not (tmp_path / "run" / "ckpt-00000002").exists()


def test_cli_data_shards_then_train(tmp_path):
    src = tmp_path / "pictures"
    for cls in ("a", "b"):
        (src / cls).mkdir(parents=True)
        for i in range(4):
            (src / cls / f"{i}.png").write_bytes(png(hash((cls, i)) % 1000))
    (src / "a" / "broken.png").write_bytes(b"nope")
    res = subprocess.run([RVQ, "data", "shards", str(src), str(tmp_path / "shards"), "--per-shard", "3"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "8 images in 3 shard(s), 2 classes" in res.stdout and "1 file(s) skipped" in res.stdout
    pattern = res.stdout.split("data.train=")[1].split()[0]
    p = tmp_path / "r.yaml"
    p.write_text(TINY.format(train=pattern, val=pattern, out=tmp_path / "run"))
    assert train(load_recipe(p, ["train.steps=1"]), quiet=True).step == 1
    bad = subprocess.run([RVQ, "data", "shards", str(tmp_path / "absent"), str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "is not a folder" in bad.stderr and "Traceback" not in bad.stderr


def test_tensorboard_tracker_writes_events(tmp_path, shards):
    pytest.importorskip("tensorboard")  # in the test extra; optional for users
    train(load_recipe(recipe_file(tmp_path, shards), ["train.steps=2", "output.tensorboard=true"]), quiet=True)
    events = list((tmp_path / "run").rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_low_usage_warning_names_fitting_remedies():
    from rvq_cli.config import QuantizerConfig
    from rvq_cli.training.trainer import low_usage_warning

    ste = QuantizerConfig(estimator="ste", codebook_size=8192)
    assert low_usage_warning(0.01, 10, 1000, ste) is None  # too early to judge
    assert low_usage_warning(0.50, 500, 1000, ste) is None  # healthy
    msg = low_usage_warning(0.01, 500, 1000, ste)
    assert "1.0% of 8192 codes" in msg and "step 500" in msg
    assert "estimator=rotation" in msg and "dead_code_threshold" in msg and "init=kmeans" in msg
    tuned = QuantizerConfig(estimator="rotation", codebook_dim=4, dead_code_threshold=1.0, init="kmeans")
    assert "Remedies" not in low_usage_warning(0.01, 500, 1000, tuned)
    low_dim = QuantizerConfig(estimator="rotation", dim=8, dead_code_threshold=1.0, init="kmeans")  # codes of dim 8
    assert "Remedies" not in low_usage_warning(0.01, 500, 1000, low_dim)


def test_cosine_decay_horizon_and_floor():
    """optim.decay_steps: the cosine reaches min_lr_ratio there and stays (the official Table 1
    schedule: warmup 3,000, cosine to lr/2 at 50,000, whatever the run's length)."""
    import math

    from rvq_cli.config import OptimConfig
    from rvq_cli.training.build import lr_factor

    o = OptimConfig(schedule="cosine", warmup_steps=10, min_lr_ratio=0.5, decay_steps=110)
    assert lr_factor(0, o, 50) == pytest.approx(0.1) and lr_factor(9, o, 50) == pytest.approx(1.0)
    assert lr_factor(10, o, 50) == pytest.approx(1.0)
    assert lr_factor(60, o, 50) == pytest.approx(0.5 + 0.5 * 0.5 * (1 + math.cos(math.pi * 0.5)))  # halfway: 0.75
    assert lr_factor(110, o, 50) == pytest.approx(0.5) and lr_factor(500, o, 50) == pytest.approx(0.5)
    default = OptimConfig(schedule="cosine", warmup_steps=10)
    assert lr_factor(50, default, 50) == pytest.approx(0.0)  # null: the horizon is train.steps


def test_taming_legacy_vq_loss_puts_beta_on_the_codebook_term():
    from rvq_cli.quantize import VectorQuantizer

    torch.manual_seed(0)
    z = torch.randn(2, 4, 3, 3)
    out = {}
    for name in ("vqvae", "taming_legacy"):
        torch.manual_seed(1)
        vq = VectorQuantizer(4, 8, update="learned", beta=0.25, vq_loss=name)
        out[name] = {k: float(v.detach()) for k, v in vars(vq(z).losses).items()}
    d2 = out["vqvae"]["commitment"] / 0.25  # mean (e − sg q)², the same for both
    assert out["taming_legacy"]["commitment"] == pytest.approx(d2)
    assert out["taming_legacy"]["codebook"] == pytest.approx(0.25 * out["vqvae"]["codebook"])


def test_clip_pixel_norm_trains_and_evaluates_in_its_space(tmp_path, shards):
    """model.pixel_norm clip end to end: bf16 training, then `rvq eval` loads the run with the same
    normalisation and reports rec_loss in the model's space (≈3.5× the [-1, 1] mse)."""
    from rvq_cli.evaluation import evaluate
    from rvq_cli.runs import load_tokenizer

    result = train(load_recipe(recipe_file(tmp_path, shards), ["model.pixel_norm=clip", "train.precision=bf16",
                                                                "train.steps=2"]), quiet=True)
    assert result.step == 2 and np.isfinite(result.last_metrics["rec_loss"])
    assert load_tokenizer(result.run_dir).model.pixel_norm == "clip"
    m = evaluate(result.run_dir, batch_size=4, fid=False, out=tmp_path / "e.json", quiet=True).metrics
    assert 2.5 * m["mse"] < m["rec_loss"] < 5.0 * m["mse"]


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path, shards):
    """train.compile: the encoder and decoder compiled in place (state-dict keys unchanged), the same
    losses as eager to rounding, and a checkpoint that loads into an eager model."""
    from rvq_cli.runs import load_tokenizer

    eager = train(load_recipe(recipe_file(tmp_path, shards, out="eager"), ["train.steps=2"]), quiet=True)
    comp = train(load_recipe(recipe_file(tmp_path, shards, out="comp"), ["train.steps=2", "train.compile=true"]),
                 quiet=True)
    assert abs(comp.last_metrics["loss"] - eager.last_metrics["loss"]) < 1e-3 * abs(eager.last_metrics["loss"])
    a, b = load_tokenizer(eager.run_dir).model.state_dict(), load_tokenizer(comp.run_dir).model.state_dict()
    assert a.keys() == b.keys()


def test_compile_refuses_the_hessian_estimator(tmp_path, shards):
    with pytest.raises(RecipeError, match="train.compile"):
        load_recipe(recipe_file(tmp_path, shards), ["train.compile=true", "model.quantizer.estimator=hessian"])
