"""FSQ in recipes: ``model.quantizer.kind: fsq`` with ``levels``, what it derives, what it refuses
(with the dotted path and a reason), and end to end: `rvq train` three steps, then `rvq encode`
and `rvq decode` round trip its tokens (uint16, the model's own, decoded bit for bit)."""

import io
import json
import os
import subprocess
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from rvq_cli.config import RecipeError, load_recipe, recipe_to_yaml
from rvq_cli.data.images import center_crop, decode_rgb, to_batch, to_uint8
from rvq_cli.quantize import FSQuantizer
from rvq_cli.runs import load_tokenizer
from tiny import RVQ, TINY, png

FSQ = "model: {quantizer: {kind: fsq, levels: [8, 5, 5, 5], dim: 4}}\n"


def write(tmp_path, text, name="r.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def problems_of(path, overrides=()):
    with pytest.raises(RecipeError) as info:
        load_recipe(path, list(overrides))
    return {p.path: p.message for p in info.value.problems}


# ---------------------------------------------------------------- the recipe keys


def test_fsq_derives_codebook_size_dim_and_estimator(tmp_path):
    recipe = load_recipe(write(tmp_path, FSQ))
    q = recipe.model.quantizer
    assert (q.kind, q.levels, q.codebook_size, q.codebook_dim, q.estimator) == ("fsq", [8, 5, 5, 5], 1000, 4, "ste")
    again = load_recipe(write(tmp_path, recipe_to_yaml(recipe), "resolved.yaml"))  # every key written out
    assert again == recipe
    assert load_recipe(write(tmp_path, ""), ["model.quantizer.kind=fsq", "model.quantizer.levels=[8,6,5]"]) \
        .model.quantizer.codebook_size == 240
    assert load_recipe(write(tmp_path, "")).model.quantizer.kind == "vq"  # the default is unchanged


def test_fsq_accepts_the_derived_values_written_out(tmp_path):
    text = "model: {quantizer: {kind: fsq, levels: [7, 5, 5, 5, 5], codebook_size: 4375, codebook_dim: 5, " \
           "estimator: ste}}\n"
    assert load_recipe(write(tmp_path, text)).model.quantizer.codebook_size == 4375


def test_fsq_needs_levels(tmp_path):
    problems = problems_of(write(tmp_path, "model: {quantizer: {kind: fsq}}\n"))
    assert list(problems) == ["model.quantizer.levels"]
    assert "needs levels" in problems["model.quantizer.levels"] and "[8, 5, 5, 5] (1000 codes)" in \
        problems["model.quantizer.levels"]


@pytest.mark.parametrize("override, path, words", [
    ("model.quantizer.codebook_size=1024", "model.quantizer.codebook_size", ["1024", "1000", "[8, 5, 5, 5]"]),
    ("model.quantizer.codebook_dim=8", "model.quantizer.codebook_dim", ["8", "one channel per level, 4"]),
    ("model.quantizer.estimator=rotation", "model.quantizer.estimator", ["'rotation'", "straight-through"]),
    ("loss.codebook_weight=0.5", "loss.codebook_weight", ["0.5", "does not have"]),
])
def test_fsq_refuses_disagreeing_values(tmp_path, override, path, words):
    problems = problems_of(write(tmp_path, FSQ), [override])
    assert list(problems) == [path]
    assert all(w in problems[path] for w in words), problems[path]


@pytest.mark.parametrize("key, value", [
    ("lookup", "cosine"), ("update", "learned"), ("decay", 0.99), ("beta", 0.25), ("vq_loss", "taming_legacy"),
    ("init", "kmeans"), ("kmeans_iters", 3), ("dead_code_threshold", 1.0), ("gamma", "one"), ("epsilon", 0.1),
    ("temperature", "[2.0, 0.5]"), ("kl_weight", 0.1), ("gumbel_logits", "linear"), ("cosine_output", "renormalize"),
    ("ema_counts", "zeros"), ("cosine_init", "as_drawn"), ("diveq_noise_std", 0.01),
])
def test_fsq_refuses_every_vq_setting_once(tmp_path, key, value):
    """One problem, at the key, saying FSQ ignores it (not also the vq checks' own reasons)."""
    problems = problems_of(write(tmp_path, FSQ), [f"model.quantizer.{key}={value}"])
    assert list(problems) == [f"model.quantizer.{key}"], problems
    assert "no effect with kind fsq" in problems[f"model.quantizer.{key}"]


def test_levels_are_refused_under_vq_and_checked(tmp_path):
    problems = problems_of(write(tmp_path, "model: {quantizer: {levels: [8, 5, 5, 5]}}\n"))
    assert list(problems) == ["model.quantizer.levels"] and "kind fsq only" in problems["model.quantizer.levels"]
    for bad, words in (("[8, 2, 5]", ">= 3"), ("[]", "non-empty"), ("[8, x]", "integer")):
        problems = problems_of(write(tmp_path, FSQ), [f"model.quantizer.levels={bad}"])
        assert all(k.startswith("model.quantizer.levels") for k in problems), (bad, problems)
        assert any(words in m for m in problems.values()), (bad, problems)
    problems = problems_of(write(tmp_path, FSQ), ["model.quantizer.kind=lfq"])
    assert list(problems) == ["model.quantizer.kind"] and "'vq'" in problems["model.quantizer.kind"]


# ---------------------------------------------------------------- end to end


def rvq(*args):
    res = subprocess.run([RVQ, *map(str, args)], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, RVQ_COMPILE="never"))
    assert res.returncode == 0, res.stderr[-3000:] + res.stdout[-3000:]
    return res


@pytest.fixture(scope="module")
def fsq_run(tmp_path_factory, shards):
    """`rvq train` of the tiny recipe with FSQ levels [8, 5, 5, 5] on the 4 channels of the encoder."""
    root = tmp_path_factory.mktemp("fsq")
    text = TINY.format(train=shards["train"], val=shards["val"], out=root / "run")
    vq = "quantizer: {codebook_size: 16, dim: 4}"
    assert vq in text
    path = write(root, text.replace(vq, "quantizer: {kind: fsq, levels: [8, 5, 5, 5], dim: 4}"), "fsq.yaml")
    res = rvq("train", path)
    return root, res


def test_rvq_train_runs_fsq(fsq_run):
    root, res = fsq_run
    assert "FSQ levels [8, 5, 5, 5]" in res.stdout and "1000 codes" in res.stdout and "commitment" not in res.stdout
    rows = [json.loads(x) for x in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert r["commitment"] == 0.0 and r["fallbacks"] == 0 and r["restarted"] == 0
        assert 0 < r["quant_error"] < 1 / 16 and 0 < r["usage"] <= 1 and r["grad_cos"] == pytest.approx(1.0)
        assert all(np.isfinite(v) for v in r.values() if isinstance(v, float))
    tok = load_tokenizer(root / "run")
    assert isinstance(tok.model.quantize, FSQuantizer) and tok.model.quantize.codebook_size == 1000
    assert not any(k.startswith("quantize.") for k in tok.model.state_dict())  # dim 4 = 4 levels: no projection


def read_tokens(out):
    rows = {}
    for shard in sorted(out.glob("tokens-*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                if ext == "tokens.npy":
                    rows[key] = np.load(io.BytesIO(tar.extractfile(m).read()), allow_pickle=False)
    return rows


def test_rvq_encode_decode_round_trip(fsq_run, shards):
    root, _ = fsq_run
    rvq("encode", root / "run", shards["val"], root / "tokens", "--num-workers", "0", "-q")
    manifest = json.loads((root / "tokens" / "manifest.json").read_text())
    assert manifest["codebook_size"] == 1000 and manifest["dtype"] == "uint16" and manifest["grid"] == [8, 8]
    tokens = read_tokens(root / "tokens")
    keys = [f"val{i:03d}" for i in range(8)]  # tests/conftest.py's val shard: png(100 + i)
    assert sorted(tokens) == keys
    model = load_tokenizer(root / "run").model
    x = to_batch([center_crop(decode_rgb(png(100 + i)), 16) for i in range(8)])
    with torch.no_grad():
        want = model.encode(x)
        rec = model(x).reconstruction
    for key, w in zip(keys, want):
        assert tokens[key].dtype == np.uint16
        np.testing.assert_array_equal(tokens[key].astype(np.int64), w.numpy(), err_msg=key)
    assert torch.equal(model.decode_indices(want), rec)  # tokens decode to the forward pass, bit for bit
    rvq("decode", root / "run", root / "tokens", root / "png", "--batch-size", "8", "-q")
    pixels = to_uint8(rec).permute(0, 2, 3, 1).numpy()
    for key, w in zip(keys, pixels):
        with Image.open(root / "png" / f"{key}.png") as im:
            np.testing.assert_array_equal(np.asarray(im), w, err_msg=key)
