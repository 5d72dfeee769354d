"""Model-weight EMA (train.ema_decay): the average against one computed by hand, the live
buffers beside it, an exact resume, and eval / encode / decode using it."""

import json

import pytest
import torch
from safetensors.torch import load_file

from rvq_cli.config import load_recipe
from rvq_cli.runs import CheckpointError, latest_checkpoint, load_tokenizer, read_state
from rvq_cli.training import TrainingError, train
from rvq_cli.training.ema import WeightEMA
from tiny import recipe_file


def test_the_average_is_torchs_ema_of_the_parameters():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = WeightEMA(net, 0.9)
    want = None
    for _ in range(4):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        net.train()(torch.randn(5, 3))  # moves the BatchNorm buffers
        ema.update(net)
        now = [p.detach().clone() for p in net.parameters()]
        want = now if want is None else [0.9 * w + 0.1 * p for w, p in zip(want, now)]
    for got, w in zip(ema.module.parameters(), want):
        torch.testing.assert_close(got, w, rtol=1e-6, atol=1e-7)
    for got, live in zip(ema.module.buffers(), net.buffers()):
        assert torch.equal(got, live)  # buffers are the live model's
    assert ema.updates == 4 and not any(p.requires_grad for p in ema.module.parameters())


def _recipe(tmp_path, shards, *extra):
    return load_recipe(recipe_file(tmp_path, shards), ["train.ema_decay=0.5", "train.ckpt_every=2",
                                                       "train.keep_last=5", *extra])


def test_a_run_saves_its_average_and_resumes_it_exactly(tmp_path, shards):
    straight = train(_recipe(tmp_path, shards, "train.steps=4", f"output.dir={tmp_path / 'a'}"), quiet=True)
    first = _recipe(tmp_path, shards, "train.steps=2", f"output.dir={tmp_path / 'b'}")
    train(first, quiet=True)
    train(_recipe(tmp_path, shards, "train.steps=4", f"output.dir={tmp_path / 'b'}"), tmp_path / "b", resume=True,
          quiet=True)
    a, b = latest_checkpoint(straight.run_dir), latest_checkpoint(tmp_path / "b")
    ema_a, ema_b = load_file(str(a / "ema.safetensors")), load_file(str(b / "ema.safetensors"))
    assert ema_a.keys() == ema_b.keys() and all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    assert read_state(a)["ema_updates"] == read_state(b)["ema_updates"] == 4
    trained = load_file(str(a / "model.safetensors"))
    assert ema_a.keys() == trained.keys()
    assert not torch.equal(ema_a["encoder.conv_in.weight"], trained["encoder.conv_in.weight"])  # averaged
    assert torch.equal(ema_a["quantize.codebook"], trained["quantize.codebook"])  # an EMA codebook is a buffer


def test_eval_encode_and_decode_use_the_average(tmp_path, shards):
    from rvq_cli.evaluation import evaluate
    from rvq_cli.tokens import encode_dataset

    run = train(_recipe(tmp_path, shards, "train.steps=2", f"output.dir={tmp_path / 'r'}"), quiet=True).run_dir
    tok = load_tokenizer(run)
    ema = load_file(str(latest_checkpoint(run) / "ema.safetensors"))
    assert tok.weights == "ema"
    assert all(torch.equal(v, ema[k]) for k, v in tok.model.state_dict().items())
    plain = load_tokenizer(run, ema=False)
    assert plain.weights == "trained" and plain.tokenizer_id != tok.tokenizer_id
    report = evaluate(run, fid=False, lpips=False, quiet=True, out=tmp_path / "e.json").report
    assert report["weights"] == "ema" and report["tokenizer_id"] == tok.tokenizer_id
    encode_dataset(run, shards["val"], tmp_path / "tokens", quiet=True)
    manifest = json.loads((tmp_path / "tokens" / "manifest.json").read_text())
    assert manifest["weights"] == "ema" and manifest["tokenizer"] == tok.tokenizer_id


def test_without_ema_there_is_no_average(tmp_path, shards):
    run = train(load_recipe(recipe_file(tmp_path, shards), ["train.steps=2"]), quiet=True).run_dir
    assert not (latest_checkpoint(run) / "ema.safetensors").exists()
    assert load_tokenizer(run).weights == "trained"
    with pytest.raises(CheckpointError, match="has no ema.safetensors"):
        load_tokenizer(run, ema=True)
    with pytest.raises(TrainingError, match="train.ema_decay"):  # a recipe change: refused on resume
        train(load_recipe(recipe_file(tmp_path, shards), ["train.steps=3", "train.ema_decay=0.9"]), run,
              resume=True, quiet=True)


def test_the_trained_weights_on_request_and_decode_follows_the_manifest(tmp_path, shards):
    import subprocess

    from rvq_cli.tokens import decode_dataset, encode_dataset
    from tiny import RVQ

    run = train(_recipe(tmp_path, shards, "train.steps=2", f"output.dir={tmp_path / 'r'}"), quiet=True).run_dir
    trained = load_tokenizer(run, ema=False)
    encode_dataset(run, shards["val"], tmp_path / "tokens", quiet=True, ema=False)
    manifest = json.loads((tmp_path / "tokens" / "manifest.json").read_text())
    assert manifest["weights"] == "trained" and manifest["tokenizer"] == trained.tokenizer_id
    report = decode_dataset(run, tmp_path / "tokens", tmp_path / "png", quiet=True)  # picks the trained weights
    assert report.count == 8
    res = subprocess.run([RVQ, "eval", str(run), "--weights", "trained", "--no-fid", "--no-lpips", "-q", "--out",
                          str(tmp_path / "e.json")], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "e.json").read_text())["weights"] == "trained"
    res = subprocess.run([RVQ, "encode", str(run), shards["val"], str(tmp_path / "t2"), "--weights", "best"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "--weights 'best'" in res.stderr and "Traceback" not in res.stderr
