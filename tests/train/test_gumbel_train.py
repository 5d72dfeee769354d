"""The karpathy/deep-vector-quantization Gumbel baseline (gumbel_logits linear, KL warmup)
trained end to end on tiny data: the logged schedules, resume, and tokens equal to eval."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from rvq_cli.config import load_recipe
from rvq_cli.runs import load_tokenizer
from rvq_cli.training import train
from tiny import recipe_file

KARPATHY = ["model.quantizer.estimator=gumbel", "model.quantizer.gumbel_logits=linear",
            "model.quantizer.update=learned", "model.quantizer.beta=0", "model.quantizer.kl_warmup_steps=2",
            "model.quantizer.temperature_steps=4", "train.ckpt_every=2"]


def cos_anneal(e0, e1, t0, t1, e):  # karpathy's dvq/vqvae.py ramp, written out
    alpha = 1.0 - math.cos(max(0, min(1, (e - e0) / (e1 - e0))) * math.pi / 2)
    return alpha * t1 + (1 - alpha) * t0


def rows_of(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_karpathy_gumbel_trains_resumes_and_encodes_like_its_eval(tmp_path, shards):
    straight = train(load_recipe(recipe_file(tmp_path, shards, out="straight"), KARPATHY + ["train.steps=4"]),
                     quiet=True)
    rows = rows_of(straight.run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:  # logged at step r["step"] after the optimizer step s = r["step"] - 1
        s = r["step"] - 1
        assert r["kl_weight"] == pytest.approx(cos_anneal(0, 2, 0.0, 5e-4, s))
        assert r["temperature"] == pytest.approx(cos_anneal(0, 4, 1.0, 1 / 16, s))
        assert math.isfinite(r["loss"]) and r["commitment"] == 0
    assert rows[0]["kl_weight"] == 0 and rows[-1]["kl_weight"] == rows[-2]["kl_weight"] > 0

    path = recipe_file(tmp_path, shards, out="split")
    first = train(load_recipe(path, KARPATHY + ["train.steps=2"]), quiet=True)
    second = train(load_recipe(path, KARPATHY + ["train.steps=4"]), run_dir=first.run_dir, resume=True, quiet=True)
    assert second.step == 4
    resumed = rows_of(second.run_dir)
    assert [r["kl_weight"] for r in resumed] == [r["kl_weight"] for r in rows]  # the ramp is a function of the step
    a = load_file(str(straight.run_dir / "ckpt-00000004" / "model.safetensors"))
    b = load_file(str(second.run_dir / "ckpt-00000004" / "model.safetensors"))
    assert a.keys() == b.keys() and "quantize.logit_proj.weight" in a
    for k in a:
        assert torch.equal(a[k], b[k]), k

    tok = load_tokenizer(straight.run_dir)
    model = tok.model.eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        out = model(x)
        logits = model.quantize.logit_proj(model.encode_latents(x).movedim(1, -1))  # (B, h, w, K)
        tokens = model.encode(x)
        assert torch.equal(tokens, out.indices) and torch.equal(tokens, logits.argmax(-1))
        assert torch.equal(model.decode_indices(tokens), out.reconstruction)
