"""What the hardware runs fast: the numeric precision a recipe's ``auto`` resolves to, detected
(never guessed), and the memory format, each explained in one line for the logs.

bf16 autocast is fast on CUDA devices that support bf16 (compute capability 8.0 and later) and on
CPUs with AVX512-BF16 or AMX instructions (oneDNN then runs bf16 convolutions and matrix products
natively); elsewhere it is emulated and slower than fp32, so ``auto`` means fp32 there. The
quantizer's own math stays in fp32 whatever the precision (DESIGN: quantizer math in fp32).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["Choice", "compile_modules", "cpu_bf16_instructions", "keep_grad_layouts", "resolve_memory_format",
           "resolve_precision"]

PRECISIONS = ("auto", "no", "bf16", "fp16")
ACCELERATE_ENV = "ACCELERATE_MIXED_PRECISION"  # what accelerate launch sets from --mixed_precision / accelerate config
MEMORY_FORMATS = ("auto", "contiguous", "channels_last")


@dataclass(frozen=True)
class Choice:
    value: str  # what runs: "no" | "bf16" | "fp16" (Accelerate's names), or a memory format
    reason: str  # one line for the logs

    def __str__(self) -> str:
        return f"{self.value} ({self.reason})"


def cpu_bf16_instructions() -> list[str]:
    """The CPU's native bf16 instruction sets among AVX512-BF16 and AMX-BF16 (empty: none).
    Asks torch's CPU feature detection, then /proc/cpuinfo where torch does not tell."""
    found = []
    probes = (("AVX512-BF16", "_is_avx512_bf16_supported", "avx512_bf16"),
              ("AMX-BF16", "_is_amx_tile_supported", "amx_bf16"))
    flags = None
    for name, probe, flag in probes:
        fn = getattr(torch.cpu, probe, None)
        if fn is not None:
            try:
                if fn():
                    found.append(name)
                continue
            except RuntimeError:
                pass
        if flags is None:
            flags = _cpuinfo_flags()
        if flag in flags:
            found.append(name)
    return found


def _cpuinfo_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def cuda_bf16_native(device: torch.device) -> bool:
    """Whether a CUDA device runs bf16 natively: compute capability 8.0 (Ampere) or later on
    NVIDIA GPUs (torch's ``is_bf16_supported`` also says yes where bf16 is only emulated);
    torch's answer without emulation on ROCm."""
    if getattr(torch.version, "hip", None):
        try:
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except TypeError:
            return bool(torch.cuda.is_bf16_supported())
    return torch.cuda.get_device_capability(device)[0] >= 8


def training_device() -> torch.device:
    """The accelerator rvq runs on: a CUDA GPU, else Apple's MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_precision(setting: str | None, device: torch.device) -> Choice:
    """The autocast precision for ``setting`` on ``device``: explicit settings as they are;
    ``auto`` is bf16 where the device runs it natively, else fp32 ("no"); unset (None) is
    Accelerate's (``accelerate launch --mixed_precision``, ``accelerate config``), else fp32."""
    if setting is None:
        import os

        value = os.environ.get(ACCELERATE_ENV)
        if not value:
            return Choice("no", "unset in the recipe and in Accelerate: fp32")
        if value not in ("no", "bf16", "fp16"):
            raise ValueError(f"Accelerate's mixed precision {value!r} ({ACCELERATE_ENV}) is not one rvq trains in; "
                             "set train.precision to no, bf16, fp16 or auto in the recipe")
        return Choice(value, f"Accelerate's setting ({ACCELERATE_ENV}={value})")
    if setting not in PRECISIONS:
        raise ValueError(f"unknown precision {setting!r}; valid: {', '.join(PRECISIONS)}")
    if setting != "auto":
        return Choice(setting, "set in the recipe")
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        if cuda_bf16_native(device):
            return Choice("bf16", f"auto: {name} runs bf16 natively")
        return Choice("no", f"auto: {name} has no native bf16 (it would be emulated)")
    if device.type == "cpu":
        found = cpu_bf16_instructions()
        if found:
            return Choice("bf16", f"auto: the CPU has {' and '.join(found)}")
        return Choice("no", "auto: the CPU has neither AVX512-BF16 nor AMX, so bf16 would be emulated")
    return Choice("no", f"auto: no bf16 detection for {device.type} devices, fp32")


def resolve_memory_format(setting: str, model_name: str, device: torch.device | None = None) -> Choice:
    """The layout of the model's weights and 4-D inputs on ``device`` (default: the CPU).
    channels_last applies to the convolutional family only (transformers have no 4-D activations
    to reorder). ``auto``: channels_last for the conv models on the CPU where rvq's GroupNorm C
    loops run (with them a bf16 training step took 0.80–0.84× its contiguous time on a 2-core AMX Xeon,
    fp32 0.90–0.93×; PyTorch's own channels-last GroupNorm backward made it 1.2–1.3× slower); contiguous
    elsewhere, GPUs included, until measured there (docs/benchmarks.md)."""
    if setting not in MEMORY_FORMATS:
        raise ValueError(f"unknown memory format {setting!r}; valid: {', '.join(MEMORY_FORMATS)}")
    if model_name != "conv":
        if setting == "channels_last":
            return Choice("contiguous", f"channels_last asked, but the {model_name} model has no convolutional trunk")
        if setting == "auto":
            return Choice("contiguous", f"auto: the {model_name} model has no convolutional trunk")
    if setting != "auto":
        return Choice(setting, "set in the recipe")
    device = torch.device("cpu") if device is None else device
    if device.type != "cpu":
        return Choice("contiguous", f"auto: channels_last is not measured on {device.type} devices yet")
    from .native import status

    why_not = status()
    if why_not != "in use":
        return Choice("contiguous", f"auto: rvq's channels-last GroupNorm for the CPU is not available ({why_not})")
    return Choice("channels_last", "auto: the conv model runs faster in channels_last on the CPU")


def torch_memory_format(choice: Choice) -> torch.memory_format:
    return torch.channels_last if choice.value == "channels_last" else torch.contiguous_format


def keep_grad_layouts(module: torch.nn.Module) -> int:
    """Make every parameter's gradient arrive in the parameter's own strides; returns how many
    parameters can need it (those with a size-1 dimension, e.g. 1×1 conv weights).

    oneDNN's (and cuDNN's) conv backward hands 1×1 kernels a weight gradient with channels-last
    strides ([C, 1, C, C] for a [C, C, 1, 1] weight). Autograd accepts it, since strides of
    size-1 dimensions do not change the memory order, but DDP compares strides literally, warns
    "Grad strides do not match bucket view strides" and copies through a slow path every step.
    A hook on the parameter re-strides such a gradient before it is accumulated (a copy of a
    tiny kernel), so the buckets stay contiguous views and DDP stays quiet."""
    count = 0
    for p in module.parameters():
        if not p.requires_grad or 1 not in p.shape:
            continue
        count += 1

        def restride(grad: torch.Tensor, p: torch.nn.Parameter = p) -> torch.Tensor:
            if grad.stride() == p.stride() or grad.layout != torch.strided:
                return grad
            return torch.empty_strided(p.shape, p.stride(), dtype=grad.dtype, device=grad.device).copy_(grad)

        p.register_hook(restride)
    return count


def compile_modules(model: torch.nn.Module, disc: torch.nn.Module | None = None,
                    double_backward: bool = False) -> list[str]:
    """``train.compile``: compile the tokenizer's encoder and decoder (and the discriminator) in
    place with ``nn.Module.compile``, so state-dict keys and checkpoints stay as they are. The
    quantizer stays eager (its search, statistics and estimator hooks are data-dependent; the
    estimator kernels compile on their own). A discriminator that is differentiated twice (R1)
    stays eager: torch.compile has no double backward. Returns the names compiled."""
    done = []
    for name in ("encoder", "decoder"):
        getattr(model, name).compile()
        done.append(name)
    if disc is not None and not double_backward:
        disc.compile()
        done.append("discriminator")
    return done
