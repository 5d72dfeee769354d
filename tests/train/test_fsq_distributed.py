"""FSQ in real two-process training (torchrun, gloo): the quantizer's batch statistics are summed
over both ranks, and the projections inside it stay identical on both."""

import json

import torch
from safetensors.torch import load_file

from tiny import recipe_file


def test_two_processes_train_fsq_identically(tmp_path, shards, run_two):
    path = recipe_file(tmp_path, shards, out="dist")
    run_two(path, tmp_path, 29571, "model.quantizer.kind=fsq", "model.quantizer.levels=[8,5,5,5]",
            "model.quantizer.codebook_size=1000", "model.quantizer.dim=8", "train.steps=2")
    a, b = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    assert {k for k in a if k.startswith("quantize.")} == {"quantize.project_in.weight", "quantize.project_in.bias",
                                                           "quantize.project_out.weight", "quantize.project_out.bias"}
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows = [json.loads(x) for x in (tmp_path / "dist" / "metrics.jsonl").read_text().splitlines()]
    for r in rows:  # counted over both ranks' 2 × 4 images of 8×8 tokens: a whole number of the 1000 codes
        used = r["usage"] * 1000
        assert abs(used - round(used)) < 1e-3 and 1 <= round(used) <= 2 * 4 * 64
        assert r["commitment"] == 0.0 and 0 < r["quant_error"] < 1 / 16
