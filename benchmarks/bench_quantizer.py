"""Training step of the whole quantization layer: rvq's VectorQuantizer against
vector-quantize-pytorch's VectorQuantize(..., rotation_trick=True).

At the paper's codebook shapes (K codes × d dims, N vectors: 1024×32 with N=16,384; 8192×3
with N=65,536; 16384×4 with N=16,384) each layer runs forward (search, EMA update with decay
0.8, estimator, commitment loss) and backward, in training mode, with the same settings. Each
implementation runs in its own subprocess so its peak memory (growth of the process's maximum
resident set from before the first step) is its own. Prints median times and the ratio rvq / vqp.
Needs vector-quantize-pytorch:  pip install -e ".[bench]";  run:  python benchmarks/bench_quantizer.py
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

SHAPES = [(1024, 32, 16384), (8192, 3, 65536), (16384, 4, 16384)]  # (K, d, N), paper Tables 1, 3


def _rvq_step(k: int, d: int):
    from rvq_cli.quantize import VectorQuantizer

    vq = VectorQuantizer(dim=d, codebook_size=k, estimator="rotation", lookup="euclidean", update="ema",
                         decay=0.8, beta=1.0).train()

    def step(x):  # x: (N, d) -> the layer takes channel-first (B, d, N)
        z = x.t().unsqueeze(0)
        out = vq(z)
        (out.quantized.sum() + out.loss).backward()

    return step


def _vqp_step(k: int, d: int):
    from vector_quantize_pytorch import VectorQuantize

    vq = VectorQuantize(dim=d, codebook_size=k, decay=0.8, commitment_weight=1.0, rotation_trick=True).train()

    def step(x):  # x: (N, d) -> the layer takes channel-last (B, N, d)
        quantized, _, loss = vq(x.unsqueeze(0))
        (quantized.sum() + loss).backward()

    return step


def worker(impl: str, k: int, d: int, n: int, repeat: int) -> dict:
    torch.manual_seed(0)
    step = (_rvq_step if impl == "rvq" else _vqp_step)(k, d)
    x = torch.randn(n, d, requires_grad=True)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # torch, the layer and x, before any step
    step(x)  # warm-up (and torch.compile of rvq's estimator kernels)
    step(x)
    times = []
    for _ in range(repeat):
        x.grad = None
        t0 = time.perf_counter()
        step(x)
        times.append(time.perf_counter() - t0)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"time": statistics.median(times), "step_peak_mb": (rss1 - rss0) / 1024, "max_rss_mb": rss1 / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--worker", nargs=4, metavar=("IMPL", "K", "D", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        impl, k, d, n = args.worker
        print(json.dumps(worker(impl, int(k), int(d), int(n), args.repeat)))
        return

    try:
        import vector_quantize_pytorch  # noqa: F401
    except ImportError:
        sys.exit("vector-quantize-pytorch is not installed: pip install -e '.[bench]'")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeat} training steps")
    print(f"{'K':>6} {'d':>3} {'N':>6} | {'rvq ms':>8} {'vqp ms':>9} {'ratio':>6} | "
          f"{'rvq step peak MB':>16} {'vqp step peak MB':>16}")
    for k, d, n in SHAPES:
        res = {}
        for impl in ("rvq", "vqp"):
            cmd = [sys.executable, __file__, "--repeat", str(args.repeat), "--worker", impl, str(k), str(d), str(n)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            res[impl] = json.loads(out.strip().splitlines()[-1])
        r, v = res["rvq"], res["vqp"]
        print(f"{k:>6} {d:>3} {n:>6} | {r['time'] * 1e3:>8.1f} {v['time'] * 1e3:>9.1f} {r['time'] / v['time']:>6.3f} | "
              f"{r['step_peak_mb']:>16.0f} {v['step_peak_mb']:>16.0f}")
    print("ratio = rvq time / vqp time (lower is better); step peak = growth of the subprocess's peak resident\n"
          "memory from before the first step (torch, layer and input loaded) to the end; for rvq it includes\n"
          "torch.compile of the estimator kernel on the first step")


if __name__ == "__main__":
    main()
