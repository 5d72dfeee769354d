"""Forward+backward time of the rotation estimator against its alternatives.

For N rows of dimension D (default N = 65,536, D in 3, 4, 32, 256), times one forward and one
backward of:
  rvq rotation             the default (RVQ_COMPILE=auto): for D ≤ 8 the C loops of
                            rvq_cli/native/lowdim.c, else torch.compile at this size
  rvq rotation (compiled)   RVQ_COMPILE=always: the torch.compile kernel at every D
  rvq rotation (eager)      RVQ_COMPILE=never
  autograd §4.2             the straightforward formula λ[e − 2r(rᵀe) + 2q̂(êᵀe)] with λ, r, ê, q̂
                            detached, differentiated by autograd
  vqp rotate_to             vector-quantize-pytorch's rotation trick (pip install -e ".[bench]")
  rvq ste                   our STE (returns q as a view, passes g as-is)
  ste e+sg(q-e)             the textbook STE expression
  copy N×D                  one clone of g: the 2-pass memory bound that an STE "only copies"
and prints the ratios the project tracks. Run:  python benchmarks/bench_estimators.py
With --sweep, it times the backward kernel alone at the first of --dims for N = 1,024 ... 262,144
rows, compiled by torch.compile and (for D ≤ 8) in C, to tell a fixed per-call cost (flat in N) from
per-row work (linear in N).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from rvq_cli.quantize import get_estimator, set_compile


def autograd_rotation(e: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """§4.2 written directly with autograd (constants detached)."""
    a, b = e.norm(dim=-1, keepdim=True), q.norm(dim=-1, keepdim=True)
    eh, qh = (e / a).detach(), (q / b).detach()
    r = ((eh + qh) / (eh + qh).norm(dim=-1, keepdim=True)).detach()
    lam = (b / a).detach()
    return lam * (e - 2 * r * (r * e).sum(-1, keepdim=True) + 2 * qh * (eh * e).sum(-1, keepdim=True))


def textbook_ste(e: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return e + (q - e).detach()


def interleaved(fns: dict, e, q, g, repeat: int, warmup: int = 3) -> dict[str, float]:
    """Median seconds of fn(e, q).backward(g) for each of ``fns`` (None: one clone of g), the
    variants taking turns run by run, so that a slow spell of the machine hits them alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(warmup + repeat):
        for name, fn in fns.items():
            e.grad = None
            t0 = time.perf_counter()
            if fn is None:
                g.clone()
            else:
                fn(e, q).backward(g)
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def sweep(d: int, repeat: int) -> None:
    """The rotation backward kernel (γ = ‖q‖/‖e‖) alone at dimension d, over N: compiled by
    torch.compile, and in C where D ≤ 8."""
    import functools
    import logging

    from rvq_cli.quantize.estimators import native
    from rvq_cli.quantize.estimators.kernels import rotation_vjp_kernel

    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "no CUDA runtime" noise
    fn = torch.compile(functools.partial(rotation_vjp_kernel, gamma_code=0, gamma_const=1.0), dynamic=False)
    in_c = d <= native.MAX_DIM and native.status() == "in use"
    gen = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, D={d}, the kernel alone, median of {repeat}"
          + ("" if in_c else f"; C loops: {native.status() if d <= native.MAX_DIM else 'only for D <= 8'}"))
    for n in (1024, 4096, 16384, 65536, 262144):
        e, q, g = (torch.randn(n, d, generator=gen) for _ in range(3))
        for t in (e, q, g):
            torch._dynamo.maybe_mark_dynamic(t, 0)
        line = f"N={n:>7}:"
        runs = [("compiled", fn)] + ([("C", functools.partial(native.rotation_vjp, gamma_code=0, gamma_const=1.0))]
                                     if in_c else [])
        for name, kernel in runs:
            times = []
            for i in range(repeat + 5):
                t0 = time.perf_counter()
                kernel(e, q, g)
                if i >= 5:
                    times.append(time.perf_counter() - t0)
            ms = statistics.median(times) * 1e3
            line += f"   {name} {ms:8.3f} ms {ms * 1e6 / n:6.2f} ns per row"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=65536)
    parser.add_argument("--dims", type=int, nargs="+", default=[3, 4, 32, 256])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    parser.add_argument("--sweep", action="store_true", help="the compiled kernel alone over N (see the docstring)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.sweep:
        sweep(args.dims[0], args.repeat)
        return
    try:
        from vector_quantize_pytorch.vector_quantize_pytorch import rotate_to
    except ImportError:
        rotate_to = None
        print("vector-quantize-pytorch is not installed (pip install -e '.[bench]'): skipping its column")

    rot = get_estimator("rotation")
    ste = get_estimator("ste")

    def default(e, q):
        set_compile("auto")
        return rot(e, q)

    def compiled(e, q):
        set_compile("always")
        return rot(e, q)

    def eager(e, q):
        set_compile("never")
        return rot(e, q)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, N={args.rows}, "
          f"median of {args.repeat}, variants interleaved")
    header = (f"{'D':>4} {'rvq rot':>9} {'compiled':>9} {'rvq eager':>9} {'autograd':>9} {'vqp':>9} {'rvq ste':>9} "
              f"{'ste expr':>9} {'copy':>9} | {'rot/autograd':>12} {'rot/vqp':>8} {'rot/copy':>8} {'rot/ste expr':>12}")
    print(header)
    gen = torch.Generator().manual_seed(0)
    for d in args.dims:
        e, q, g = (torch.randn(args.rows, d, generator=gen) for _ in range(3))
        e.requires_grad_(True)
        fns = {"rot": default, "compiled": compiled, "eager": eager, "autograd": autograd_rotation, "vqp": rotate_to,
               "ste": ste, "ste_expr": textbook_ste, "copy": None}
        if rotate_to is None:
            del fns["vqp"]
        t = interleaved(fns, e, q, g, args.repeat)
        t.setdefault("vqp", float("nan"))
        ms = {k: v * 1e3 for k, v in t.items()}
        print(f"{d:>4} {ms['rot']:>9.3f} {ms['compiled']:>9.3f} {ms['eager']:>9.3f} {ms['autograd']:>9.3f} "
              f"{ms['vqp']:>9.3f} {ms['ste']:>9.3f} {ms['ste_expr']:>9.3f} {ms['copy']:>9.3f} | "
              f"{t['rot'] / t['autograd']:>12.3f} {t['rot'] / t['vqp']:>8.3f} {t['rot'] / t['copy']:>8.2f} "
              f"{t['rot'] / t['ste_expr']:>12.2f}")
    print("times in ms; ratios < 1 mean rvq's rotation is faster")


if __name__ == "__main__":
    main()
