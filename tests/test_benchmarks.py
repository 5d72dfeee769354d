"""The GPU scripts and the model benchmark run end to end in their tiny CPU modes (structure, not
speed: their timings on a tiny model mean nothing; docs/benchmarks.md holds the real figures)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tiny import TINY

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str], **env) -> str:
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1", **env))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout


def test_gpu_check_tiny():
    out = run(["bash", "benchmarks/gpu_check.sh"], TINY="1")
    for recipe in ("vqgan_f4", "vqgan_f8", "vqgan_f16_imagenet"):
        assert out.count(f"| {recipe} |") == 2, out  # contiguous and channels_last
    assert "rotation / STE step time" in out and "quantization layer step" in out and "images/s" in out


def test_bench_model_tiny():
    out = run([sys.executable, "benchmarks/bench_model.py", "--tiny"])
    assert "| taming fp32 (reference) |" in out and "(precision: auto)" in out and "up-sampling then 3×3 conv" in out
    assert "| nn.TransformerEncoderLayer fp32 (reference) |" in out and "SDPA at every length" in out


def test_bench_model_fp32_only_leaves_out_every_bf16_row():
    out = run([sys.executable, "benchmarks/bench_model.py", "--tiny", "--fp32-only", "--only", "conv"])
    rows = [line.split(" | ")[0] for line in out.splitlines() if line.startswith("| rvq ")]
    assert len(rows) == 3 and all(r.startswith("| rvq fp32, ") for r in rows), out
    assert "channels_last" in " ".join(rows) and "ViT-VQGAN block" not in out


@pytest.mark.slow
def test_gpu_reproduce_tiny(tmp_path):
    out = run(["bash", "benchmarks/gpu_reproduce.sh"], TINY="1", OUT_DIR=str(tmp_path / "gr"))
    assert "gpu_reproduce:" in out and (tmp_path / "gr" / "compare.md").is_file()


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "benchmarks").glob("*.py")))
def test_every_benchmark_imports(script):
    """Each script's imports resolve against the package as it is now (its main() is not run)."""
    run([sys.executable, "-c", f"import runpy; runpy.run_path({str(ROOT / 'benchmarks' / script)!r}, "
         "run_name='not_main')"])


def test_bench_train_step_compares_every_kind_of_estimator(tmp_path):
    recipe = tmp_path / "tiny.yaml"  # the data paths are not read: the benchmark draws its own batches
    recipe.write_text(TINY.format(train="none-{0..1}.tar", val="none.tar", out=tmp_path / "run"))
    out = run([sys.executable, "benchmarks/bench_train_step.py", "--recipe", str(recipe),
               "--steps", "2", "--warmup", "0", "--estimators", "rotation", "ibq", "diveq", "hessian", "exact",
               "gumbel", "fsq", "rotation:simvq", "ste:affine"])
    for name in ("ste", "rotation", "ibq", "diveq", "hessian", "exact", "gumbel", "fsq", "rotation:simvq",
                 "ste:affine"):
        assert f"{name} / ste = " in out, out
