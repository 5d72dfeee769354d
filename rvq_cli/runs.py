"""Run folders and checkpoints: the one place that knows their layout.

A run folder (the recipe's ``output.dir``) holds
  recipe.yaml            the resolved recipe of the run
  metrics.jsonl          one JSON line of training metrics per log interval
  samples/step-N.png     reconstruction grids
  ckpt-00001200/         one folder per save, the last ``train.keep_last`` kept

A checkpoint folder holds
  model.safetensors      every parameter and buffer of the tokenizer (codebook and EMA state included)
  discriminator.safetensors  the GAN's discriminator, when the recipe has one
  optimizer.pt           optimizer and scheduler state (tensors and numbers; loaded with weights_only=True)
  rng-<rank>.safetensors each process's torch RNG state (CPU, and every CUDA device's on GPUs)
  state.json             step, data position, world size, precision, library versions
  recipe.yaml            the resolved recipe: rebuilds the model from the checkpoint alone

A checkpoint is written as ``.ckpt-00001200.tmp/`` and renamed when complete, so a crash mid-save
never leaves a partial folder under a checkpoint's name and never touches the previous ones.
Using a tokenizer reads only ``recipe.yaml``, ``state.json`` and ``model.safetensors``: no pickle
is loaded (``optimizer.pt``, the one pickle-format file, is needed only to resume training). The
tokenizer id is a hash of the weights file, so token shards name the exact weights that made them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .config import Recipe, RecipeError, load_recipe
from .errors import RvqError
from .hardware import resolve_memory_format, torch_memory_format
from .models import VQTokenizer, build_tokenizer

PREFIX = "ckpt-"
WEIGHTS, DISC_WEIGHTS, OPTIMIZER = "model.safetensors", "discriminator.safetensors", "optimizer.pt"
EMA_WEIGHTS = "ema.safetensors"  # the model-weight EMA (train.ema_decay), the tokenizer's keys
RECIPE, STATE, METRICS, SAMPLES = "recipe.yaml", "state.json", "metrics.jsonl", "samples"
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle")

# Keys a resumed run may change; anything else must match the checkpoint's recipe.
RESUMABLE_CHANGES = frozenset({"train.steps", "train.log_every", "train.sample_every", "train.ckpt_every",
                               "train.keep_last", "data.num_workers", "output.tensorboard", "output.log_with",
                               "output.project",
                               "train.precision"})  # resumed in the precision this machine runs (state.json says)


class CheckpointError(RvqError):
    """A path that does not lead to a usable rvq checkpoint; the message says why and what to give."""


@dataclass
class CheckpointState:
    step: int  # optimizer steps completed
    micro_batches: int  # batches each process has drawn from its training stream
    world_size: int
    num_workers: int
    precision: str = "no"  # the autocast precision that ran ("auto" resolved): no, bf16, fp16
    memory_format: str = "contiguous"  # of the model's weights and inputs: contiguous or channels_last
    # of the weights at step 0 (rvq_cli.training.start): the whole tokenizer's, and the part every
    # method of a comparison shares (the tokenizer outside its quantizer, and the discriminator)
    init_fingerprint: str | None = None
    shared_fingerprint: str | None = None
    ema_updates: int = 0  # optimizer steps averaged into ema.safetensors (train.ema_decay)


# ---------------------------------------------------------------- layout


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def checkpoint_dirs(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    run = Path(run_dir)
    if not run.is_dir():
        return []
    return sorted(p for p in run.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / STATE).is_file())


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    found = checkpoint_dirs(run_dir)
    return found[-1] if found else None


def unfinished_saves(run_dir: Path) -> list[str]:
    """Names of checkpoint folders whose save never completed (``.ckpt-N.tmp``), oldest first."""
    return sorted(x.name for x in run_dir.glob(f".{PREFIX}*.tmp"))


def read_state(ckpt: Path) -> dict:
    """The checkpoint's ``state.json`` ({} when absent); a damaged one is a CheckpointError."""
    try:
        state = json.loads((ckpt / STATE).read_text())
    except FileNotFoundError:
        return {}
    except (ValueError, OSError) as err:
        raise CheckpointError(f"{ckpt / STATE} is unreadable ({err}); the checkpoint is damaged. "
                              f"Use another {PREFIX}NNNNNNNN folder of the run.") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{ckpt / STATE} is not a JSON object; the checkpoint is damaged. "
                              f"Use another {PREFIX}NNNNNNNN folder of the run.")
    return state


def saved_step(ckpt: Path) -> int:
    """Optimizer steps the checkpoint's weights were trained for (-1: no state.json)."""
    state = read_state(ckpt)
    if not state:
        return -1
    try:
        return int(state["step"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{ckpt / STATE} has no valid step ({err!s}); the checkpoint is damaged. "
                              f"Use another {PREFIX}NNNNNNNN folder of the run.") from None


def saved_recipe(ckpt: Path) -> Recipe:
    """The resolved recipe a checkpoint was trained with (paths inside it are not checked)."""
    try:
        return load_recipe(ckpt / RECIPE, check_paths=False)
    except RecipeError as err:
        raise CheckpointError(f"{ckpt / RECIPE} is not a valid recipe, so the model cannot be rebuilt: {err}") from None


# ---------------------------------------------------------------- resuming


def flat_recipe(recipe: Recipe | dict) -> dict:
    """The recipe (or a nested dict) as dotted keys: ``{"model.quantizer.estimator": "rotation", ...}``."""
    tree = recipe.model_dump(mode="json") if isinstance(recipe, Recipe) else recipe
    out = {}
    for k, v in tree.items():
        out.update({f"{k}.{kk}": vv for kk, vv in flat_recipe(v).items()} if isinstance(v, dict) else {k: v})
    return out


def recipe_changes(saved: Recipe, now: Recipe, allowed=RESUMABLE_CHANGES) -> list[str]:
    """Each setting in which ``now`` differs from ``saved`` outside ``allowed``, as
    ``"key: A in the checkpoint, B now"`` (empty: the run may resume with ``now``)."""
    a, b = flat_recipe(saved), flat_recipe(now)
    changed = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k) and k not in allowed)
    return [f"{k}: {a.get(k)!r} in the checkpoint, {b.get(k)!r} now" for k in changed]


# ---------------------------------------------------------------- saving and restoring training


def _state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}


def save_checkpoint(run_dir: Path, model: nn.Module, optimizer, scheduler, state: CheckpointState,
                    recipe_yaml: str, keep_last: int, discriminator: nn.Module | None = None,
                    disc_optimizer=None, ema: nn.Module | None = None) -> Path:
    """Write a checkpoint atomically (call on the main process only, which is rank 0) and prune
    old ones. Other ranks add their RNG state with :func:`save_rng` afterwards. A GAN run also
    stores the discriminator's weights and its optimizer's state; a run with a weight EMA the
    averaged tokenizer (``ema``)."""
    final = run_dir / checkpoint_name(state.step)
    tmp = run_dir / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(_state_dict(model), str(tmp / WEIGHTS))
    if ema is not None:
        save_file(_state_dict(ema), str(tmp / EMA_WEIGHTS))
    opt = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
    if discriminator is not None:
        save_file(_state_dict(discriminator), str(tmp / DISC_WEIGHTS))
        opt["disc_optimizer"] = disc_optimizer.state_dict()
    torch.save(opt, tmp / OPTIMIZER)
    (tmp / STATE).write_text(json.dumps({**vars(state), "torch": torch.__version__}, indent=1))
    (tmp / RECIPE).write_text(recipe_yaml)
    save_rng(tmp, 0)
    for f in tmp.iterdir():  # data on disk before the rename makes the checkpoint visible
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():  # the same step saved again (e.g. Ctrl-C right after a periodic save)
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in checkpoint_dirs(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def save_rng(ckpt: Path, rank: int) -> None:
    """This process's generators: torch's CPU generator and, on a GPU machine, every CUDA device's
    (the data streams seed Python's and numpy's per sample from the recipe's seed and position)."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    save_file(state, str(ckpt / f"rng-{rank}.safetensors"))


def load_checkpoint(ckpt: Path, model: nn.Module, optimizer=None, scheduler=None, rank: int = 0,
                    discriminator: nn.Module | None = None, disc_optimizer=None) -> CheckpointState:
    """Restore weights (and optimizer, scheduler, discriminator, this rank's RNG when given)
    from ``ckpt``."""
    model.load_state_dict(load_file(str(ckpt / WEIGHTS)))
    if discriminator is not None:
        discriminator.load_state_dict(load_file(str(ckpt / DISC_WEIGHTS)))
    if optimizer is not None:
        opt = torch.load(ckpt / OPTIMIZER, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(opt["optimizer"])
        scheduler.load_state_dict(opt["scheduler"])
        if disc_optimizer is not None:
            disc_optimizer.load_state_dict(opt["disc_optimizer"])
    rng = ckpt / f"rng-{rank}.safetensors"
    if rng.is_file():
        state = load_file(str(rng))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(list(state["cuda"]))
    raw = json.loads((ckpt / STATE).read_text())
    return CheckpointState(**{k: raw[k] for k in CheckpointState.__dataclass_fields__ if k in raw})


# ---------------------------------------------------------------- using a trained tokenizer


@dataclass
class LoadedTokenizer:
    model: VQTokenizer  # in eval mode
    recipe: Recipe  # the resolved recipe the checkpoint was trained with
    checkpoint: Path  # the ckpt-NNNNNNNN folder
    step: int  # optimizer steps the weights were trained for
    tokenizer_id: str  # 16 hex digits of the SHA-256 of the weights file used
    weights: str = "trained"  # "ema": the model-weight EMA (ema.safetensors), "trained": model.safetensors

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
            partial = unfinished_saves(p)
            hint = (f" It holds only an unfinished save ({partial[-1]}): the run stopped before its first "
                    "checkpoint was complete." if partial else "")
            raise CheckpointError(f"{p} holds no checkpoint.{hint} {_WHAT}")
    missing = [n for n in (WEIGHTS, RECIPE) if not (ckpt / n).is_file()]
    if missing:
        raise CheckpointError(f"{ckpt} is not a complete rvq checkpoint: {' and '.join(missing)} missing. {_WHAT}")
    return ckpt


def tokenizer_id(ckpt: Path, weights: str = WEIGHTS) -> str:
    """16 hex digits of the SHA-256 of the checkpoint's weights file (``weights``: its name)."""
    h = hashlib.sha256()
    with open(ckpt / weights, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()[:16]


def state_mismatch(expected: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor]) -> str:
    """How the state dict ``weights`` fails to fit ``expected`` ("missing: …; unexpected: …;
    other shape: …", at most 4 keys each), or "" when it fits."""
    missing, unexpected = sorted(expected.keys() - weights.keys()), sorted(weights.keys() - expected.keys())
    shapes = sorted(k for k in expected.keys() & weights.keys() if expected[k].shape != weights[k].shape)
    return "; ".join(f"{label}: {', '.join(keys[:4])}{' …' if len(keys) > 4 else ''}"
                     for label, keys in (("missing", missing), ("unexpected", unexpected), ("other shape", shapes))
                     if keys)


def _check_weights(ckpt: Path, expected: dict, weights: dict, name: str = WEIGHTS) -> None:
    problems = state_mismatch(expected, weights)
    if problems:
        raise CheckpointError(f"{ckpt / name} does not match the model its {RECIPE} describes ({problems}). "
                              "The weights and the recipe come from different runs; use a checkpoint folder as "
                              "`rvq train` wrote it.")


def load_tokenizer(path: str | os.PathLike, device: str | torch.device = "cpu",
                   ema: bool | None = None) -> LoadedTokenizer:
    """The tokenizer saved at ``path`` (run directory or checkpoint folder), in eval mode: its
    model-weight EMA where the checkpoint has one (``ema=None``, or True, which insists), else
    the trained weights (``ema=False`` always). Its weights are in the memory format the run's
    ``train.memory_format`` resolves to on ``device``, as eval / encode / decode run it, so that
    ``model(x)`` computes what those commands write."""
    ckpt = resolve_checkpoint(path)
    recipe = saved_recipe(ckpt)
    if ema and not (ckpt / EMA_WEIGHTS).is_file():
        raise CheckpointError(f"{ckpt} has no {EMA_WEIGHTS}: the run was trained without a weight EMA "
                              "(train.ema_decay). Use its trained weights.")
    name = EMA_WEIGHTS if ema is not False and (ckpt / EMA_WEIGHTS).is_file() else WEIGHTS
    model = build_tokenizer(recipe.model, recipe.data.image_size, recipe.data.frames)
    try:
        weights = load_file(str(ckpt / name))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{ckpt / name} is not a readable safetensors file ({err}); the checkpoint is "
                              "corrupt or truncated. Use another ckpt-NNNNNNNN folder of the run.") from None
    _check_weights(ckpt, model.state_dict(), weights, name)
    model.load_state_dict(weights)
    device = torch.device(device)
    layout = resolve_memory_format(recipe.train.memory_format, recipe.model.name, device)
    model.to(device, memory_format=torch_memory_format(layout)).eval()
    return LoadedTokenizer(model, recipe, ckpt, saved_step(ckpt), tokenizer_id(ckpt, name),
                           "ema" if name == EMA_WEIGHTS else "trained")
