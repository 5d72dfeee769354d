"""rvq's model around the quantizer, timed against the code users know, in one process and
interleaved step by step (machine noise hits every variant alike).

1. Conv tokenizer: a training step (forward, MSE, backward, Adam step) of rvq's conv encoder and
   decoder against taming-transformers' own ``Encoder``/``Decoder`` (its ``taming.modules`` only;
   bench extra) at the same configuration and the same weights (rvq loads taming's state dict
   key for key). taming runs as its users run it: fp32, contiguous, torch's default Adam. rvq runs
   in every combination of precision (fp32, bf16 autocast), memory format (contiguous,
   channels_last) and, with --compile, ``nn.Module.compile``; "(precision: auto)" marks what the
   quickstarts' ``precision: auto`` and the default ``train.memory_format`` give on this machine.
2. ViT-VQGAN block (Table 10's width): rvq's pre-LN ``Block`` against a plain fp32 reference,
   ``torch.nn.TransformerEncoderLayer`` with the same width, heads, MLP and pre-LN.

Run:  python benchmarks/bench_model.py [--reps 12] [--compile] [--tiny] [--fp32-only]
Prints the median step time of each variant and its ratio to the fp32 reference (taming's, or
the plain transformer layer's); goal for the "(precision: auto)" row: at most 0.5. --tiny runs a very small
configuration for two repetitions (the test suite's smoke run; its timings mean nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import rvq_cli.models.attention as attention_forms
from rvq_cli.hardware import resolve_memory_format, resolve_precision, torch_memory_format
from rvq_cli.models.conv import Decoder, Encoder, Upsample
from rvq_cli.models.vit import Block
from rvq_cli.training.build import adam_kernel

# the taming-configured model: 64 px, ch 64, ch_mult 1,2,2,4, two res blocks, attention at 16
CONV = dict(ch=64, ch_mult=(1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,), resolution=64, z_channels=64)
CONV_BATCH = 8
VIT = dict(dim=512, heads=8, mlp_dim=1024, tokens=256, batch=4)  # Table 10's width; 256 tokens (128 px, p 8)
TINY_CONV = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), resolution=16, z_channels=32)
TINY_VIT = dict(dim=64, heads=4, mlp_dim=128, tokens=16, batch=2)


@dataclass
class Variant:
    name: str
    step: Callable[[], None]
    compile_s: float = 0.0


def _autocast(precision: str):
    if precision == "no":
        return contextlib.nullcontext()
    return torch.autocast("cpu" if not torch.cuda.is_available() else "cuda",
                          dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def taming_pair(arch: dict):
    from taming.modules.diffusionmodules.model import Decoder as TDecoder
    from taming.modules.diffusionmodules.model import Encoder as TEncoder

    kw = dict(arch, out_ch=3, in_channels=3, dropout=0.0, resamp_with_conv=True)
    with contextlib.redirect_stdout(io.StringIO()):  # taming's Decoder prints the z shape
        return TEncoder(double_z=False, **kw), TDecoder(**kw)


def rvq_pair(arch: dict, taming: tuple[nn.Module, nn.Module]):
    common = dict(arch)
    enc, dec = Encoder(in_channels=3, **common), Decoder(out_channels=3, **common)
    enc.load_state_dict(taming[0].state_dict())
    dec.load_state_dict(taming[1].state_dict())
    return enc, dec


def unfolded_upsampling(dec: nn.Module) -> nn.Module:
    """``dec`` with each Upsample computed as taming computes it (a nearest 2× up-sampled copy,
    then the 3×3 conv) instead of rvq's folded stride-2 transposed conv: the same function."""
    def forward(self: Upsample, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))

    for m in dec.modules():
        if isinstance(m, Upsample):
            m.forward = forward.__get__(m)
    return dec


def conv_step(enc: nn.Module, dec: nn.Module, x: torch.Tensor, precision: str, layout: torch.memory_format,
              fused: bool) -> Callable[[], None]:
    params = list(enc.parameters()) + list(dec.parameters())
    opt = torch.optim.Adam(params, lr=1e-4, **(adam_kernel() if fused else {}))
    enc.to(memory_format=layout)
    dec.to(memory_format=layout)
    x = x.contiguous(memory_format=layout)

    def step() -> None:
        with _autocast(precision):
            rec = dec(enc(x))
        loss = F.mse_loss(rec.float(), x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def conv_variants(arch: dict, batch: int, compile_: bool, fp32_only: bool = False) -> tuple[list[Variant], str]:
    dev = _device()
    torch.manual_seed(0)
    x = torch.rand(batch, 3, arch["resolution"], arch["resolution"], device=dev) * 2 - 1
    t_enc, t_dec = taming_pair(arch)
    default = (resolve_precision("auto", dev).value,
               resolve_memory_format(_schema_default("memory_format"), "conv", dev).value)
    out = [Variant("taming fp32 (reference)", conv_step(t_enc.to(dev), t_dec.to(dev), x, "no",
                                                         torch.contiguous_format, fused=False))]
    enc, dec = rvq_pair(arch, taming_pair(arch))  # the optimizer's share: torch's default Adam loop
    out.append(Variant("rvq fp32, contiguous, torch's default Adam", conv_step(enc.to(dev), dec.to(dev), x, "no",
                                                                             torch.contiguous_format, fused=False)))
    combos = [("no", "contiguous"), ("no", "channels_last"), ("bf16", "contiguous"), ("bf16", "channels_last")]
    for precision, layout in combos[:2] if fp32_only else combos:
        for compiled in ((False, True) if compile_ else (False,)):
            enc, dec = rvq_pair(arch, taming_pair(arch))
            enc, dec = enc.to(dev), dec.to(dev)
            label = f"rvq {'fp32' if precision == 'no' else precision}, {layout}" + (", compiled" if compiled else "")
            if (precision, layout) == default and not compiled:
                label += " (precision: auto)"
            step = conv_step(enc, dec, x, precision, torch_memory_format(_choice(layout)), fused=True)
            v = Variant(label, step)
            if compiled:
                enc.compile()
                dec.compile()
                t0 = time.perf_counter()
                step()  # the first call compiles
                _sync()
                v.compile_s = time.perf_counter() - t0
            out.append(v)
    if not fp32_only:  # the folded up-sampling's share
        enc, dec = rvq_pair(arch, taming_pair(arch))
        out.append(Variant("rvq bf16, contiguous, up-sampling then 3×3 conv",
                           conv_step(enc.to(dev), unfolded_upsampling(dec.to(dev)), x, "bf16",
                                     torch.contiguous_format, fused=True)))
    return out, f"precision auto here: {default[0]}; default memory format: {default[1]}"


def _choice(layout: str):
    from rvq_cli.hardware import Choice

    return Choice(layout, "")


def _schema_default(key: str) -> str:
    from rvq_cli.config import TrainConfig

    return TrainConfig.model_fields[key].default


def vit_step(block: nn.Module, x: torch.Tensor, precision: str) -> Callable[[], None]:
    opt = torch.optim.Adam(block.parameters(), lr=1e-4, **adam_kernel())

    def step() -> None:
        with _autocast(precision):
            y = block(x)
        y.float().square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def sdpa_everywhere(step: Callable[[], None]) -> Callable[[], None]:
    """``step`` with every attention in SDPA's form, as without rvq's matmul form for short
    bf16 sequences on the CPU (rvq_cli/models/attention.py): the same function."""
    def run() -> None:
        kept, attention_forms.MATMUL_MAX_TOKENS = attention_forms.MATMUL_MAX_TOKENS, 0
        try:
            step()
        finally:
            attention_forms.MATMUL_MAX_TOKENS = kept

    return run


def vit_variants(cfg: dict, compile_: bool, fp32_only: bool = False) -> list[Variant]:
    dev = _device()
    torch.manual_seed(0)
    x = torch.randn(cfg["batch"], cfg["tokens"], cfg["dim"], device=dev)
    ref = nn.TransformerEncoderLayer(cfg["dim"], cfg["heads"], cfg["mlp_dim"], dropout=0.0, activation="gelu",
                                     batch_first=True, norm_first=True).to(dev)
    out = [Variant("nn.TransformerEncoderLayer fp32 (reference)", vit_step(ref, x, "no"))]
    for precision in ("no",) if fp32_only else ("no", "bf16"):
        for compiled in ((False, True) if compile_ else (False,)):
            block = Block(cfg["dim"], cfg["heads"], cfg["mlp_dim"]).to(dev)
            step = vit_step(block, x, precision)
            v = Variant(f"rvq Block {'fp32' if precision == 'no' else precision}" + (", compiled" if compiled else ""),
                        step)
            if compiled:
                block.compile()
                t0 = time.perf_counter()
                step()
                _sync()
                v.compile_s = time.perf_counter() - t0
            out.append(v)
    if not fp32_only:
        block = Block(cfg["dim"], cfg["heads"], cfg["mlp_dim"]).to(dev)
        out.append(Variant("rvq Block bf16, SDPA at every length", sdpa_everywhere(vit_step(block, x, "bf16"))))
    return out


def interleaved(variants: list[Variant], reps: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per step of each variant, the variants taking turns step by step (the order
    rotating from one repetition to the next, so no variant always follows the same one)."""
    for _ in range(warmup):
        for v in variants:
            v.step()
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    for r in range(reps):
        for v in variants[r % len(variants):] + variants[: r % len(variants)]:  # each takes each turn
            _sync()
            t0 = time.perf_counter()
            v.step()
            _sync()
            times[v.name].append(time.perf_counter() - t0)
    return {k: statistics.median(t) for k, t in times.items()}


def report(title: str, variants: list[Variant], medians: dict[str, float]) -> None:
    ref = medians[variants[0].name]
    print(f"\n{title}")
    print("| variant | ms / step | vs reference | compile s |")
    print("|---|---:|---:|---:|")
    for v in variants:
        comp = f"{v.compile_s:.1f}" if v.compile_s else ""
        print(f"| {v.name} | {medians[v.name] * 1e3:.1f} | {medians[v.name] / ref:.2f} | {comp} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=12, help="timed steps per variant (after 2 warm-up steps)")
    parser.add_argument("--compile", action="store_true", help="also time nn.Module.compile'd variants")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes, 2 repetitions (a smoke run)")
    parser.add_argument("--only", choices=("conv", "vit"), default=None)
    parser.add_argument("--fp32-only", action="store_true",
                        help="skip the bf16 rows (on a CPU without AVX512-BF16 or AMX bf16 is emulated and slow)")
    args = parser.parse_args()
    reps = 2 if args.tiny else args.reps
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {_device()}; "
          f"bf16 here: {resolve_precision('auto', _device())}")
    if args.only in (None, "conv"):
        arch, batch = (TINY_CONV, 2) if args.tiny else (CONV, CONV_BATCH)
        variants, default = conv_variants(arch, batch, args.compile, args.fp32_only)
        report(f"conv encoder+decoder training step, {arch}, batch {batch}; {default}", variants,
               interleaved(variants, reps, warmup=1 if args.tiny else 2))
    if args.only in (None, "vit"):
        cfg = TINY_VIT if args.tiny else VIT
        variants = vit_variants(cfg, args.compile, args.fp32_only)
        report(f"ViT-VQGAN block training step, {cfg}", variants,
               interleaved(variants, reps, warmup=1 if args.tiny else 2))


if __name__ == "__main__":
    main()
