"""Precision and memory-format choices: explicit settings kept, ``auto`` resolved from what the
CPU reports (checked against /proc/cpuinfo), and the choice recorded in a trained run."""

import json
import os
from pathlib import Path

os.environ.setdefault("RVQ_COMPILE", "never")

import pytest
import torch

from rvq_cli import hardware
from rvq_cli.config import Recipe, load_recipe
from rvq_cli.hardware import cpu_bf16_instructions, resolve_memory_format, resolve_precision


def _cpuinfo_flags():
    p = Path("/proc/cpuinfo")
    if not p.is_file():
        return None
    line = next((x for x in p.read_text().splitlines() if x.startswith("flags")), "")
    return set(line.partition(":")[2].split())


@pytest.mark.parametrize("setting", ["no", "bf16", "fp16"])
def test_explicit_precisions_are_kept(setting):
    assert resolve_precision(setting, torch.device("cpu")).value == setting


def test_auto_on_this_cpu_follows_its_instruction_sets():
    flags = _cpuinfo_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo")
    native = bool({"avx512_bf16", "amx_bf16"} & flags)
    assert bool(cpu_bf16_instructions()) == native
    choice = resolve_precision("auto", torch.device("cpu"))
    assert choice.value == ("bf16" if native else "no")
    assert choice.reason.startswith("auto:")
    if native:  # the reason names what was found
        assert ("AVX512-BF16" in choice.reason) == ("avx512_bf16" in flags)
        assert ("AMX" in choice.reason) == ("amx_bf16" in flags)
    else:
        assert "neither AVX512-BF16 nor AMX" in choice.reason


def test_auto_without_bf16_instructions_is_fp32(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_bf16_instructions", lambda: [])
    choice = resolve_precision("auto", torch.device("cpu"))
    assert choice.value == "no" and "emulated" in choice.reason


def test_unknown_settings_are_refused():
    with pytest.raises(ValueError, match="valid: auto, no, bf16, fp16"):
        resolve_precision("fp8", torch.device("cpu"))
    with pytest.raises(ValueError, match="valid: auto, contiguous, channels_last"):
        resolve_memory_format("nhwc", "conv")


def test_channels_last_applies_to_conv_models_only():
    assert resolve_memory_format("channels_last", "conv").value == "channels_last"
    assert resolve_memory_format("channels_last", "vit").value == "contiguous"
    assert resolve_memory_format("contiguous", "conv").value == "contiguous"


def test_auto_memory_format_is_channels_last_for_conv_models_on_the_cpu_with_the_c_loops(monkeypatch):
    from rvq_cli import native

    assert resolve_memory_format("auto", "vit").value == "contiguous"
    assert resolve_memory_format("auto", "conv", torch.device("cuda")).value == "contiguous"  # not measured there
    expected = "channels_last" if native.status() == "in use" else "contiguous"
    assert resolve_memory_format("auto", "conv", torch.device("cpu")).value == expected
    monkeypatch.setattr(native, "status", lambda: "turned off by RVQ_NATIVE=0")
    choice = resolve_memory_format("auto", "conv")
    assert choice.value == "contiguous" and "RVQ_NATIVE=0" in choice.reason


def test_yaml_no_means_fp32(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("train:\n  precision: no\n")
    assert load_recipe(p, check_paths=False).train.precision == "no"
    assert load_recipe(p, ["train.precision=no"], check_paths=False).train.precision == "no"
    assert Recipe().train.precision is None and Recipe().train.memory_format == "auto"


def test_unset_precision_is_accelerates(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert resolve_precision(None, cpu).value == "no" and "unset" in resolve_precision(None, cpu).reason
    for value in ("no", "bf16", "fp16"):
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", value)
        choice = resolve_precision(None, cpu)
        assert choice.value == value and "ACCELERATE_MIXED_PRECISION" in choice.reason
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert resolve_precision("no", cpu).value == "no"  # the recipe's own setting wins
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp8")
    with pytest.raises(ValueError, match="'fp8'"):
        resolve_precision(None, cpu)


def test_the_device_is_cuda_then_mps_then_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert hardware.training_device().type == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert hardware.training_device().type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert hardware.training_device().type == "cuda"


def test_a_run_under_accelerates_bf16_trains_and_evaluates_in_it(tmp_path, monkeypatch):
    """accelerate launch --mixed_precision bf16 sets ACCELERATE_MIXED_PRECISION: a recipe that
    leaves train.precision unset trains in it, and eval runs the precision the run trained in."""
    from rvq_cli.data import write_shards
    from rvq_cli.evaluation import evaluate
    from rvq_cli.training import TrainingError, train
    from tiny import TINY, png

    write_shards(({"__key__": f"i{i:03d}", "png": png(i)} for i in range(8)), tmp_path / "d", max_count=8)
    shard = str(tmp_path / "d" / "shard-000000.tar")
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY.format(train=shard, val=shard, out=tmp_path / "run"))
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    recipe = load_recipe(path, ["train.steps=2"])
    assert recipe.train.precision is None
    result = train(recipe, quiet=True)
    assert json.loads((result.run_dir / "ckpt-00000002" / "state.json").read_text())["precision"] == "bf16"
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    report = evaluate(result.run_dir, fid=False, lpips=False, quiet=True, out=tmp_path / "e.json").report
    assert report["settings"]["precision"] == "bf16" and "trained in" in report["settings"]["precision_reason"]
    resumed = train(load_recipe(path, ["train.steps=3", "train.precision=no"]), result.run_dir, resume=True,
                    quiet=True)  # another precision on resume: allowed, recorded
    assert json.loads((resumed.run_dir / "ckpt-00000003" / "state.json").read_text())["precision"] == "no"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp8")
    with pytest.raises(TrainingError, match="fp8"):
        train(load_recipe(path, ["train.steps=1", f"output.dir={tmp_path / 'x'}"]), quiet=True)


def test_a_run_records_what_ran(tmp_path):
    from rvq_cli.data import write_shards
    from rvq_cli.training import train
    from rvq_cli.training.trainer import Trainer
    from tiny import TINY, png

    write_shards(({"__key__": f"i{i:03d}", "png": png(i)} for i in range(8)), tmp_path / "d", max_count=8)
    shard = str(tmp_path / "d" / "shard-000000.tar")
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY.format(train=shard, val=shard, out=tmp_path / "run"))
    recipe = load_recipe(path, ["train.steps=2", "train.precision=auto", "train.memory_format=channels_last"])
    result = train(recipe, quiet=True)
    state = json.loads((result.run_dir / "ckpt-00000002" / "state.json").read_text())
    assert state["precision"] == resolve_precision("auto", torch.device("cpu")).value
    assert state["memory_format"] == "channels_last"
    trainer = Trainer(load_recipe(path, ["train.memory_format=channels_last", f"output.dir={tmp_path / 'r2'}"]),
                      tmp_path / "r2")
    w = trainer.acc.unwrap_model(trainer.model).encoder.conv_in.weight
    assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    # load_tokenizer gives the weights the layout eval / encode / decode run them in, so that
    # model(x) computes what those commands write
    from rvq_cli.runs import load_tokenizer

    w = load_tokenizer(result.run_dir).model.encoder.conv_in.weight
    assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    w = load_tokenizer(result.run_dir, ema=False).model.decoder.conv_out.weight
    assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()


@pytest.mark.parametrize("capability, want", [((7, 5), "no"), ((8, 0), "bf16"), ((9, 0), "bf16")])
def test_auto_on_cuda_needs_native_bf16(monkeypatch, capability, want):
    """torch's is_bf16_supported() says yes on a T4 (sm_75), where bf16 is emulated: auto looks
    at the compute capability instead."""
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "GPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", torch.device("cuda")).value == want
