"""Speed on the accelerator at hand (run by benchmarks/gpu_check.sh): for the paper's VQGAN recipes
(vqgan_f4, vqgan_f8, vqgan_f16_imagenet) at their recipe batch, a tokenizer training step
(forward, the recipe's pixel loss and the quantizer's loss, backward, fused AdamW step) in bf16,
contiguous and channels_last, eager and compiled: it/s and peak memory; then the rotation/STE
step ratio, the quantization layer against vector-quantize-pytorch (if installed), and
``encode`` images/s. Synthetic [-1, 1] images (no dataset needed); every number printed is
measured here.

    python benchmarks/gpu_check.py [--tiny] [--no-compile] [--steps 10]

--tiny: a tiny model at 32 px, batch 2, 2 steps, fp32 where bf16 is not native (the test
suite's smoke run on a CPU; its timings mean nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
import torch.nn.functional as F

from rvq_cli.config import load_recipe
from rvq_cli.hardware import resolve_precision
from rvq_cli.models import build_tokenizer
from rvq_cli.training.build import build_optimizer

RECIPES = ("vqgan_f4", "vqgan_f8", "vqgan_f16_imagenet")
TINY = ["data.image_size=32", "model.encoder.ch=32", "model.encoder.ch_mult=[1,2]", "model.encoder.num_res_blocks=1",
        "model.encoder.attn_resolutions=[]", "model.encoder.z_channels=32", "model.quantizer.dim=4",
        "model.quantizer.codebook_size=64", "train.batch_size=2"]


def dev() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_mb() -> float:
    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else float("nan")


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def autocast(precision: str):
    if precision == "no":
        return contextlib.nullcontext()
    return torch.autocast(dev().type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def make_step(recipe, layout: torch.memory_format, compiled: bool, precision: str, estimator: str | None = None):
    recipe = recipe.model_copy(deep=True)
    if estimator:
        recipe.model.quantizer.estimator = estimator
    torch.manual_seed(0)
    model = build_tokenizer(recipe.model, recipe.data.image_size).to(dev()).train()
    model.to(memory_format=layout)
    opt = build_optimizer(model.parameters(), recipe.optim)
    if compiled:
        model.encoder.compile()
        model.decoder.compile()
    size, b = recipe.data.image_size, recipe.train.batch_size
    x = (torch.rand(b, 3, size, size, device=dev()) * 2 - 1).contiguous(memory_format=layout)
    kind = recipe.loss.reconstruction

    def step() -> None:
        with autocast(precision):
            out = model(x)
        rec = out.reconstruction.float()
        loss = (F.mse_loss(rec, x) if kind == "l2" else F.l1_loss(rec, x)) + out.quantize.loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, model, x


def time_steps(step, n: int) -> float:
    times = []
    for _ in range(n):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def recipes(tiny: bool) -> dict:
    return {name: load_recipe(f"recipes/{name}.yaml", ["data.train=demo", "data.val=demo"] + (TINY if tiny else []),
                              check_paths=False) for name in RECIPES}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--steps", type=int, default=10)
    a = p.parse_args()
    steps, warm = (2, 1) if a.tiny else (a.steps, 3)
    precision = resolve_precision("auto" if a.tiny else "bf16", dev()).value
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    print(f"gpu_check on {name}, torch {torch.__version__}, precision {precision}")
    layouts = (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last))
    rs = recipes(a.tiny)

    print("\n| recipe | batch | layout | compiled | it/s | peak MB | compile s |")
    print("|---|---:|---|---|---:|---:|---:|")
    for rname, recipe in rs.items():
        for lname, layout in layouts:
            for compiled in (False,) if a.no_compile else (False, True):
                reset_peak()
                step, _, _ = make_step(recipe, layout, compiled, precision)
                t0 = time.perf_counter()
                for _ in range(warm):
                    step()
                sync()
                warm_s = time.perf_counter() - t0
                s = time_steps(step, steps)
                comp = f"{warm_s - warm * s:.0f}" if compiled else ""
                print(f"| {rname} | {recipe.train.batch_size} | {lname} | {'yes' if compiled else 'no'} | "
                      f"{1 / s:.2f} | {peak_mb():.0f} | {comp} |", flush=True)

    recipe = rs["vqgan_f4"]
    ste, _, _ = make_step(recipe, torch.channels_last, False, precision, "ste")
    rot, _, _ = make_step(recipe, torch.channels_last, False, precision, "rotation")
    for _ in range(warm):
        ste(), rot()
    ts, tr = [], []
    for _ in range(steps):  # interleaved
        ts.append(time_steps(ste, 1))
        tr.append(time_steps(rot, 1))
    print(f"\nrotation / STE step time, vqgan_f4, channels_last: {statistics.median(tr) / statistics.median(ts):.3f} "
          f"({statistics.median(tr) * 1e3:.1f} vs {statistics.median(ts) * 1e3:.1f} ms)")

    layer_vs_vqp(a.tiny, steps, warm)

    _, model, x = make_step(recipe, torch.channels_last, False, precision)
    model.eval()
    with torch.no_grad(), autocast(precision):
        for _ in range(warm):
            model.encode(x)
        s = time_steps(lambda: model.encode(x), steps)
    print(f"\nencode, vqgan_f4 at {recipe.data.image_size} px, batch {len(x)}: {len(x) / s:.1f} images/s")


def layer_vs_vqp(tiny: bool, steps: int, warm: int) -> None:
    """One training step of the quantization layer alone (search, EMA update, rotation trick,
    commitment loss, backward) at Table 3's 8192 × 3 (tiny: 64 × 3)."""
    from rvq_cli.quantize import VectorQuantizer

    k, d, n = (64, 3, 512) if tiny else (8192, 3, 65536)
    torch.manual_seed(0)
    z = torch.randn(n // 64, d, 8, 8, device=dev())
    ours = VectorQuantizer(d, k, "rotation", decay=0.8).to(dev()).train()

    def step_ours() -> None:
        zz = z.clone().requires_grad_(True)
        out = ours(zz)
        (out.quantized.square().mean() + out.loss).backward()

    row = [f"rvq {1e3 * _median_time(step_ours, steps, warm):.1f} ms"]
    try:
        from vector_quantize_pytorch import VectorQuantize
    except ImportError:
        row.append("vector-quantize-pytorch not installed")
    else:
        theirs = VectorQuantize(dim=d, codebook_size=k, decay=0.8, rotation_trick=True, accept_image_fmap=True,
                                kmeans_init=False).to(dev()).train()

        def step_theirs() -> None:
            zz = z.clone().requires_grad_(True)
            q, _, loss = theirs(zz)
            (q.square().mean() + loss.sum()).backward()

        t = _median_time(step_theirs, steps, warm)
        row.append(f"vector-quantize-pytorch {1e3 * t:.1f} ms")
    print(f"\nquantization layer step, {k} × {d}, N = {n}: " + ", ".join(row))


def _median_time(fn, steps: int, warm: int) -> float:
    for _ in range(warm):
        fn()
    return time_steps(fn, steps)


if __name__ == "__main__":
    main()
