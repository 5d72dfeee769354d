"""A trained tokenizer from a run directory or one of its checkpoints, rebuilt from the
checkpoint alone (its resolved recipe and its safetensors weights).

Only ``recipe.yaml``, ``state.json`` and ``model.safetensors`` are read: no pickle is ever
loaded here (the optimizer state, the one pickle-format file of a checkpoint, is not needed to
use a tokenizer). The tokenizer id is a hash of the weights file, so token shards can name the
exact weights that produced them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..config import Recipe, RecipeError, load_recipe
from ..errors import RvqError
from ..hardware import PRECISIONS, Choice, resolve_memory_format, resolve_precision, torch_memory_format
from ..models import VQTokenizer
from ..train.build import build_tokenizer
from ..train.checkpoint import PREFIX, latest_checkpoint

WEIGHTS, RECIPE, STATE = "model.safetensors", "recipe.yaml", "state.json"
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle")


class CheckpointError(RvqError):
    """A path that does not lead to a usable rvq checkpoint; the message says why and what to give."""


@dataclass
class LoadedTokenizer:
    model: VQTokenizer  # in eval mode
    recipe: Recipe  # the resolved recipe the checkpoint was trained with
    checkpoint: Path  # the ckpt-NNNNNNNN folder
    step: int  # optimizer steps the weights were trained for
    tokenizer_id: str  # 16 hex digits of the SHA-256 of model.safetensors

    @property
    def run_dir(self) -> Path:
        return self.checkpoint.parent


_WHAT = ("Give a run directory (the output.dir of `rvq train`, which holds ckpt-NNNNNNNN folders) or one of "
         "its ckpt-NNNNNNNN folders.")


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint folder ``path`` names: itself, the latest complete checkpoint of a run
    directory, or the folder of a ``model.safetensors`` file."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"{p} does not exist. {_WHAT}")
    if p.is_file():
        if p.name == WEIGHTS:
            return resolve_checkpoint(p.parent)
        if p.suffix.lower() in PICKLE_SUFFIXES:
            raise CheckpointError(f"{p} looks like a pickled PyTorch file; rvq never unpickles files (they can run "
                                  f"code when loaded) and reads only its own checkpoints (safetensors weights and "
                                  f"the resolved recipe). {_WHAT}")
        raise CheckpointError(f"{p} is a file, not a checkpoint. {_WHAT}")
    if (p / WEIGHTS).exists() or (p / STATE).exists():
        ckpt = p
    else:
        ckpt = latest_checkpoint(p)
        if ckpt is None:
            partial = sorted(x.name for x in p.glob(f".{PREFIX}*.tmp"))
            hint = (f" It holds only an unfinished save ({partial[-1]}): the run stopped before its first "
                    "checkpoint was complete." if partial else "")
            raise CheckpointError(f"{p} holds no checkpoint.{hint} {_WHAT}")
    missing = [n for n in (WEIGHTS, RECIPE) if not (ckpt / n).is_file()]
    if missing:
        raise CheckpointError(f"{ckpt} is not a complete rvq checkpoint: {' and '.join(missing)} missing. {_WHAT}")
    return ckpt


def tokenizer_id(ckpt: Path) -> str:
    """16 hex digits of the SHA-256 of the checkpoint's weights file."""
    h = hashlib.sha256()
    with open(ckpt / WEIGHTS, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()[:16]


def _step(ckpt: Path) -> int:
    try:
        return int(json.loads((ckpt / STATE).read_text())["step"])
    except FileNotFoundError:
        return -1
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{ckpt / STATE} is unreadable ({err}); the checkpoint is damaged. "
                              "Use another ckpt-NNNNNNNN folder of the run.") from None


def load_tokenizer(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedTokenizer:
    """The tokenizer saved at ``path`` (run directory or checkpoint folder), in eval mode."""
    ckpt = resolve_checkpoint(path)
    try:
        recipe = load_recipe(ckpt / RECIPE, check_paths=False)
    except RecipeError as err:
        raise CheckpointError(f"{ckpt / RECIPE} is not a valid recipe, so the model cannot be rebuilt: {err}") from None
    model = build_tokenizer(recipe.model, recipe.data.image_size, recipe.data.frames)
    try:
        weights = load_file(str(ckpt / WEIGHTS))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{ckpt / WEIGHTS} is not a readable safetensors file ({err}); the checkpoint is "
                              "corrupt or truncated. Use another ckpt-NNNNNNNN folder of the run.") from None
    expected = model.state_dict()
    missing = sorted(expected.keys() - weights.keys())
    unexpected = sorted(weights.keys() - expected.keys())
    wrong = sorted(k for k in expected.keys() & weights.keys() if expected[k].shape != weights[k].shape)
    if missing or unexpected or wrong:
        parts = [f"{label}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
        raise CheckpointError(f"{ckpt / WEIGHTS} does not match the model its {RECIPE} describes ({'; '.join(parts)}). "
                              "The weights and the recipe come from different runs; use a checkpoint folder as "
                              "`rvq train` wrote it.")
    model.load_state_dict(weights)
    model.to(device).eval()
    return LoadedTokenizer(model, recipe, ckpt, _step(ckpt), tokenizer_id(ckpt))


def inference_accelerator() -> Accelerator:
    """The Accelerator of eval/encode/decode: every process of a torchrun/accelerate launch, fp32."""
    # one process-wide Accelerate state; a training run in the same process may have set another
    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(cpu=not torch.cuda.is_available())


@dataclass(frozen=True)
class InferenceSettings:
    """How eval / encode / decode run a tokenizer: the autocast precision and the memory layout,
    each resolved for this device with the reason (printed, and recorded in what they write)."""

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


def inference_settings(tok: LoadedTokenizer, device: torch.device, precision: str | None = None) -> InferenceSettings:
    """The run's own ``train.precision`` and ``train.memory_format`` (``precision`` overrides the
    former: auto, no, bf16 or fp16), resolved for ``device``; the model is put in that layout."""
    if precision is not None and precision not in PRECISIONS:
        raise CheckpointError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)} (default: the "
                              "run's train.precision).")
    setting = tok.recipe.train.precision if precision is None else precision
    choice = resolve_precision(setting, device)
    source = f"the run's train.precision {setting!r}" if precision is None else f"--precision {setting}"
    choice = Choice(choice.value, f"{source} ({choice.reason})" if setting == "auto" else source)
    settings = InferenceSettings(choice, resolve_memory_format(tok.recipe.train.memory_format, tok.recipe.model.name))
    tok.model.to(memory_format=torch_memory_format(settings.memory_format))
    return settings
