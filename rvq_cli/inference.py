"""How eval, encode and decode run a trained tokenizer: on every process of a launch, in the
run's own precision and memory format (or another precision asked for), recorded in what they
write."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from .errors import RvqError
from .hardware import PRECISIONS, Choice, resolve_memory_format, resolve_precision, torch_memory_format
from .runs import LoadedTokenizer, read_state


class InferenceError(RvqError):
    """A setting eval / encode / decode cannot run with; the message names it and the choices."""


def inference_accelerator() -> Accelerator:
    """The Accelerator of eval/encode/decode: every process of a torchrun/accelerate launch, fp32."""
    # one process-wide Accelerate state; a training run in the same process may have set another
    AcceleratorState._reset_state(reset_partial_state=False)
    from .hardware import training_device

    return Accelerator(cpu=training_device().type == "cpu")


@dataclass(frozen=True)
class InferenceSettings:
    """The autocast precision and the memory layout a tokenizer runs in, each resolved for this
    device with the reason (printed, and recorded in what eval / encode / decode write)."""

    precision: Choice
    memory_format: Choice

    def autocast(self, device: torch.device):
        """The forward pass's autocast context (none for fp32); the quantizer stays fp32 inside."""
        if self.precision.value == "no":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision.value == "bf16" else torch.float16
        return torch.autocast(device_type=device.type, dtype=dtype)

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the model's memory format (4-D image batches only)."""
        return x.contiguous(memory_format=torch_memory_format(self.memory_format)) if x.dim() == 4 else x

    def record(self) -> dict:
        return {"precision": self.precision.value, "precision_reason": self.precision.reason,
                "memory_format": self.memory_format.value}


def check_precision(precision: str | None) -> None:
    """Refuse a precision that is not one of ``PRECISIONS`` (None: the run's own)."""
    if precision is not None and precision not in PRECISIONS:
        raise InferenceError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)} (default: the run's "
                             "train.precision).")


def inference_settings(tok: LoadedTokenizer, device: torch.device, precision: str | None = None) -> InferenceSettings:
    """The run's own ``train.precision`` and ``train.memory_format`` (``precision`` overrides the
    former: auto, no, bf16 or fp16), resolved for ``device``, where ``load_tokenizer`` has already
    put the model in that layout."""
    check_precision(precision)
    setting = tok.recipe.train.precision if precision is None else precision
    if setting is None:  # the recipe left it to Accelerate: the precision the run trained in
        ran = read_state(tok.checkpoint).get("precision", "no")
        choice = Choice(ran, f"the precision the run trained in ({ran}; train.precision unset, Accelerate's)")
    else:
        choice = resolve_precision(setting, device)
        source = f"the run's train.precision {setting!r}" if precision is None else f"precision {setting} asked for"
        choice = Choice(choice.value, f"{source} ({choice.reason})" if setting == "auto" else source)
    return InferenceSettings(choice, resolve_memory_format(tok.recipe.train.memory_format, tok.recipe.model.name,
                                                           device))
