"""rvq eval end to end: the report's numbers against independent computations, r-FID/r-IS
through torch-fidelity with a weight file the test creates, two processes, and bad input."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from rvq_cli.config import load_recipe
from rvq_cli.data import write_shards
from rvq_cli.data.images import center_crop, decode_rgb, to_batch, to_uint8
from rvq_cli.evaluation import evaluate, fidelity
from rvq_cli.runs import load_tokenizer
from rvq_cli.training import train

RVQ = shutil.which("rvq") or os.path.join(os.path.dirname(sys.executable), "rvq")
FIELDS = {"rec_loss", "mse", "l1", "psnr", "usage", "usage_per_batch", "perplexity", "perplexity_per_batch",
          "quant_error", "quant_error_relative", "codes_used", "rfid", "ris", "ris_std", "is_originals", "ssim",
          "lpips_alex", "lpips_vgg"}


@pytest.fixture(autouse=True)
def no_cached_inception(tmp_path, monkeypatch):
    """No Inception weights unless a test passes them: an empty torch hub cache, no env var."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("RVQ_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.delenv("RVQ_ALEXNET_WEIGHTS", raising=False)
    monkeypatch.delenv("RVQ_VGG16_WEIGHTS", raising=False)


def cli(*args, env=None):
    res = subprocess.run([RVQ, *map(str, args)], capture_output=True, text=True, timeout=300, env=env)
    return res.returncode, res.stdout, res.stderr


def val_images(root: Path) -> tuple[list[str], torch.Tensor]:
    """The val set as rvq eval sees it: keys in order, centre-cropped to 16."""
    import webdataset as wds

    keys, arrays = [], []
    for shard in sorted((root / "val").glob("*.tar")):
        for s in wds.WebDataset(str(shard), shardshuffle=False):
            keys.append(s["__key__"])
            arrays.append(center_crop(decode_rgb(s["png"]), 16))
    return keys, to_batch(arrays)


def test_cli_report_has_every_field_and_says_what_is_missing(eval_run, tmp_path):
    code, out, err = cli("eval", eval_run / "run", "--batch-size", "4", "-q", env=dict(os.environ))
    assert code == 0, err
    report = json.loads((eval_run / "run" / "eval.json").read_text())
    assert set(report["metrics"]) == FIELDS
    assert report["metrics"]["rfid"] is None and report["metrics"]["ris"] is None
    assert report["data"]["images"] == 10 and report["data"]["skipped"] == 0
    assert report["data"]["resize"] and report["data"]["image_size"] == 16 and report["step"] == 3
    assert report["versions"]["torch-fidelity"] and len(report["tokenizer_id"]) == 16
    assert "weights-inception" in out and "--inception-weights" in out  # the one-line hint
    grid = Image.open(eval_run / "run" / "eval.png")
    assert grid.size == (8 * 16 + 9 * 2, 2 * 16 + 3 * 2)  # 8 (original, reconstruction) pairs, 4 per row


def test_metrics_match_an_independent_computation(eval_run, tmp_path, inception_file):
    result = evaluate(eval_run / "run", batch_size=4, inception_weights=inception_file, out=tmp_path / "e.json",
                      quiet=True)
    m = result.metrics
    model = load_tokenizer(eval_run / "run").model
    keys, x = val_images(eval_run)
    with torch.no_grad():
        out = model(x)
        z = model.encode_latents(x).movedim(1, -1).reshape(-1, 4)
    rec, idx = out.reconstruction, out.indices.reshape(-1)
    assert m["mse"] == pytest.approx(float((rec - x).pow(2).mean()), rel=1e-5)
    assert m["rec_loss"] == pytest.approx(m["mse"], rel=1e-12)  # the tiny recipe's loss is l2
    assert m["l1"] == pytest.approx(float((rec - x).abs().mean()), rel=1e-5)
    x8, r8 = to_uint8(x), to_uint8(rec)
    mse8 = ((x8.double() - r8.double()) / 255).pow(2).flatten(1).mean(1)
    assert m["psnr"] == pytest.approx(float((10 * torch.log10(1 / mse8)).mean()), rel=1e-6)
    counts = torch.bincount(idx, minlength=16).double()
    p = counts[counts > 0] / counts.sum()
    assert m["usage"] == pytest.approx(float((counts > 0).double().mean()))
    assert m["codes_used"] == int((counts > 0).sum())
    assert m["perplexity"] == pytest.approx(float(torch.exp(-(p * p.log()).sum())), rel=1e-9)
    codes = model.quantize.codes()
    assert m["quant_error"] == pytest.approx(float((z - codes[idx]).pow(2).mean()), rel=1e-4)
    assert m["quant_error_relative"] == pytest.approx(float((z - codes[idx]).pow(2).sum() / z.pow(2).sum()), rel=1e-4)
    # r-FID / r-IS: torch-fidelity on features computed here, in key order
    inc = fidelity.load_inception(inception_file)
    (rp, rl), (fp, fl) = fidelity.inception_features(inc, x8), fidelity.inception_features(inc, r8)
    assert m["rfid"] == pytest.approx(fidelity.fid_from_features(rp, fp), rel=1e-3, abs=1e-6)
    assert m["ris"] == pytest.approx(fidelity.inception_score(fl)[0], rel=1e-4)
    assert m["is_originals"] == pytest.approx(fidelity.inception_score(rl)[0], rel=1e-4)
    assert np.isfinite(m["rfid"]) and result.report["settings"]["inception_weights"] == str(inception_file)


def test_usage_per_batch_is_the_set_usage_when_one_batch_holds_the_set(eval_run, tmp_path):
    m = evaluate(eval_run / "run", batch_size=4, fid=False, out=tmp_path / "a.json", quiet=True).metrics
    whole = evaluate(eval_run / "run", batch_size=64, fid=False, out=tmp_path / "b.json", quiet=True).metrics
    assert whole["usage_per_batch"] == pytest.approx(whole["usage"])
    assert m["usage_per_batch"] <= m["usage"] + 1e-12  # a batch uses at most the codes the set uses
    assert m["mse"] == pytest.approx(whole["mse"], rel=1e-5)  # batching does not change the per-image numbers


def test_corrupt_samples_are_skipped_and_counted(eval_run, tmp_path, png_bytes):
    samples = [{"__key__": f"ok{i}", "png": png_bytes(200 + i)} for i in range(3)] + [{"__key__": "bad", "png": b"no"}]
    write_shards(samples, tmp_path / "mixed", max_count=8)
    r = evaluate(eval_run / "run", data=str(tmp_path / "mixed" / "*.tar"), fid=False, out=tmp_path / "m.json",
                 quiet=True).report
    assert r["data"]["images"] == 3 and r["data"]["skipped"] == 1


def test_two_processes_give_the_single_process_numbers(eval_run, tmp_path, inception_file):
    single = evaluate(eval_run / "run", batch_size=4, inception_weights=inception_file, out=tmp_path / "one.json",
                      quiet=True).report
    env = dict(os.environ, OMP_NUM_THREADS="1", RVQ_COMPILE="never")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541",
           "-m", "rvq_cli", "eval", str(eval_run / "run"), "--batch-size", "4", "--num-workers", "0",
           "--inception-weights", str(inception_file), "--out", str(tmp_path / "two.json"), "-q"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["settings"]["processes"] == 2
    assert two["data"]["images"] == 10 and two["data"]["duplicate_keys"] == 0  # nothing duplicated or dropped
    for k in ("mse", "l1", "psnr", "usage", "perplexity", "quant_error", "codes_used"):
        assert two["metrics"][k] == pytest.approx(single["metrics"][k], rel=1e-5), k
    for k in ("rfid", "ris", "is_originals"):
        assert two["metrics"][k] == pytest.approx(single["metrics"][k], rel=1e-3, abs=1e-6), k


@pytest.mark.parametrize("args, words", [
    (["eval", "{tmp}/nowhere"], "does not exist"),
    (["eval", "{run}/tiny.yaml"], "not a checkpoint"),
    (["eval", "{run}/run", "--split", "test"], "--split"),
    (["eval", "{run}/run", "--image-size", "15"], "divisible"),
    (["eval", "{run}/run", "--batch-size", "0"], "--batch-size"),
    (["eval", "{run}/run", "--inception-weights", "{tmp}/none.pth"], "none.pth"),
    (["eval", "{run}/run", "--data", "{tmp}/missing-*.tar"], "missing-"),
])
def test_bad_input_gives_one_clean_message(eval_run, tmp_path, args, words):
    code, out, err = cli(*[a.format(tmp=tmp_path, run=eval_run) for a in args], env=dict(os.environ))
    assert code == 2, (out, err)
    assert err.startswith("error:") and words in err and "Traceback" not in err


def test_a_recipe_without_validation_set_needs_data(eval_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(eval_run / "run", run)
    ckpt = next(run.glob("ckpt-*"))
    recipe = yaml.safe_load((ckpt / "recipe.yaml").read_text())
    recipe["data"]["val"] = None
    (ckpt / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    code, _, err = cli("eval", run, env=dict(os.environ))
    assert code == 2 and "--data" in err, err


def test_eval_precision_defaults_to_the_runs_and_bf16_stays_close(eval_run, tmp_path):
    fp32 = evaluate(eval_run / "run", batch_size=4, fid=False, out=tmp_path / "a.json", quiet=True)
    bf16 = evaluate(eval_run / "run", batch_size=4, fid=False, out=tmp_path / "b.json", quiet=True, precision="bf16")
    assert fp32.report["settings"]["precision"] == "no" and bf16.report["settings"]["precision"] == "bf16"
    assert "train.precision" in fp32.report["settings"]["precision_reason"]
    a, b = fp32.metrics, bf16.metrics
    assert a["rec_loss"] != b["rec_loss"] and abs(a["rec_loss"] - b["rec_loss"]) < 0.05 * a["rec_loss"]
    code, _, err = cli("eval", eval_run / "run", "--precision", "fp64", "--no-fid")
    assert code == 2 and "--precision" in err and "Traceback" not in err


def test_recipes_with_lpips_get_lpips_and_their_whole_nll(eval_run, tmp_path, vgg_file, monkeypatch):
    """A recipe with a perceptual term: eval measures LPIPS with the same network training used and
    reports the recipe's L_nll (what taming / enhancing-transformers log as val/rec_loss); the
    LPIPS values match the module run directly. Without the VGG16 weights: a note, no numbers."""
    from rvq_cli.losses import build_lpips

    recipe = tmp_path / "p.yaml"
    recipe.write_text((eval_run / "tiny.yaml").read_text().replace(str(eval_run / "run"), str(tmp_path / "run")))
    train(load_recipe(recipe, ["loss.perceptual_weight=0.25", f"loss.perceptual_weights={vgg_file}",
                               "loss.gaussian_weight=0.5", "train.steps=1"]), quiet=True)
    m = evaluate(tmp_path / "run", batch_size=4, fid=False, out=tmp_path / "e.json", quiet=True).metrics
    keys, x = val_images(eval_run)
    tok = load_tokenizer(tmp_path / "run")
    with torch.no_grad():
        rec = tok.model(x).reconstruction
        lp = build_lpips(vgg_file)(x, rec)
    assert m["lpips"] == pytest.approx(float(lp.double().mean()), rel=1e-4)
    assert m["nll"] == pytest.approx(m["rec_loss"] + 0.5 * m["mse"] / 4 + 0.25 * m["lpips"], rel=1e-9)

    monkeypatch.delenv("RVQ_VGG16_WEIGHTS", raising=False)
    vgg_file.rename(vgg_file.with_suffix(".moved"))
    try:
        result = evaluate(tmp_path / "run", batch_size=4, fid=False, out=tmp_path / "f.json", quiet=True)
    finally:
        vgg_file.with_suffix(".moved").rename(vgg_file)
    assert "lpips" not in result.metrics and any("lpips and nll skipped" in n for n in result.notes)
