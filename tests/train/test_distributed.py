"""Real two-process training on the CPU (torchrun, gloo): identical weights and codebooks on
both ranks afterwards, different data on each."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tiny import recipe_file


def test_two_processes_stay_identical_and_read_different_data(tmp_path, shards, run_two):
    path = recipe_file(tmp_path, shards, out="dist")
    text = path.read_text().replace("steps: 3", "steps: 4").replace("batch_size: 4", "batch_size: 4, grad_accum: 2")
    path.write_text(text)
    run_two(path, tmp_path, 29533)
    info = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(i["world"] == 2 and i["step"] == 4 for i in info)
    assert info[0]["pid"] != info[1]["pid"]
    assert info[0]["keys"] != info[1]["keys"]  # each rank draws its own stream
    a, b = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    for k in a:
        assert torch.equal(a[k], b[k]), k  # weights, EMA codebook and its statistics
    assert "quantize.codebook" in a
    # the checkpoint of the run holds those weights
    ckpt = load_file(str(tmp_path / "dist" / "ckpt-00000004" / "model.safetensors"))
    for k in a:
        assert torch.equal(a[k], ckpt[k]), k


def test_ddp_sees_gradients_in_the_parameters_layout(tmp_path, shards, run_two):
    """bf16 conv backward gives 1×1 kernels channels-last-strided weight gradients; DDP compared them
    literally and warned "Grad strides do not match bucket view strides" every run. The trainer
    re-strides them (hardware.keep_grad_layouts), for contiguous and channels_last models alike."""
    path = recipe_file(tmp_path, shards, out="dist")
    path.write_text(path.read_text().replace("attn_resolutions: []", "attn_resolutions: [8]")
                    .replace("steps: 3", "steps: 2"))
    for port, layout in ((29534, "contiguous"), (29535, "channels_last")):
        res = run_two(path, tmp_path / layout, port, "train.precision=bf16", f"train.memory_format={layout}",
                      f"output.dir={tmp_path / layout / 'run'}")
        assert "Grad strides do not match" not in res.stdout + res.stderr, layout


# sf_diveq draws its noise as diveq does (slow: the suite's time budget)
@pytest.mark.parametrize("estimator, port", [("diveq", 29536), ("ibq", 29537),
                                             pytest.param("sf_diveq", 29538, marks=pytest.mark.slow)])
def test_two_processes_keep_a_learned_codebook_identical(tmp_path, shards, run_two, estimator, port):
    """diveq draws its direction noise on each rank from that rank's generator, ibq sends gradient to
    every code; the learned codebook's gradients are averaged by DDP, so both ranks hold the same
    codes after every step."""
    path = recipe_file(tmp_path, shards, out="dist")
    run_two(path, tmp_path, port, f"model.quantizer.estimator={estimator}", "model.quantizer.update=learned",
            "train.steps=2")
    a, b = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    saved = load_file(str(tmp_path / "dist" / "ckpt-00000002" / "model.safetensors"))
    assert set(a) == set(b) and "quantize.embed_sum" not in a  # a learned codebook: no EMA sums
    for k in a:
        assert torch.equal(a[k], b[k]), k
        assert torch.equal(a[k], saved[k]), k
