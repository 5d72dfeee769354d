"""Checkpoints: one folder per save, written atomically, the last N kept.

A checkpoint folder ``ckpt-00001200/`` holds
  model.safetensors      every parameter and buffer of the tokenizer (codebook and EMA state included)
  optimizer.pt           optimizer and scheduler state (tensors and numbers; loaded with weights_only=True)
  rng-<rank>.safetensors each process's torch RNG state
  state.json             step, data position, world size, library versions
  recipe.yaml            the resolved recipe: rebuilds the model from the checkpoint alone
It is written as ``.ckpt-00001200.tmp/`` and renamed when complete, so a crash mid-save never
leaves a partial folder under a checkpoint's name and never touches the previous checkpoints.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

PREFIX = "ckpt-"


@dataclass
class CheckpointState:
    step: int  # optimizer steps completed
    micro_batches: int  # batches each process has drawn from its training stream
    world_size: int
    num_workers: int
    precision: str = "no"  # the autocast precision that ran ("auto" resolved): no, bf16, fp16
    memory_format: str = "contiguous"  # of the model's weights and inputs: contiguous or channels_last


def checkpoint_dirs(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    run = Path(run_dir)
    if not run.is_dir():
        return []
    return sorted(p for p in run.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / "state.json").is_file())


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    found = checkpoint_dirs(run_dir)
    return found[-1] if found else None


def _state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}


def save_checkpoint(run_dir: Path, model: nn.Module, optimizer, scheduler, state: CheckpointState,
                    recipe_yaml: str, keep_last: int, discriminator: nn.Module | None = None,
                    disc_optimizer=None) -> Path:
    """Write a checkpoint atomically (call on the main process only, which is rank 0) and prune
    old ones. Other ranks add their RNG state with :func:`save_rng` afterwards. A GAN run also
    stores ``discriminator.safetensors`` and the discriminator's optimizer in optimizer.pt."""
    final = run_dir / f"{PREFIX}{state.step:08d}"
    tmp = run_dir / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(_state_dict(model), str(tmp / "model.safetensors"))
    opt = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
    if discriminator is not None:
        save_file(_state_dict(discriminator), str(tmp / "discriminator.safetensors"))
        opt["disc_optimizer"] = disc_optimizer.state_dict()
    torch.save(opt, tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({**vars(state), "torch": torch.__version__}, indent=1))
    (tmp / "recipe.yaml").write_text(recipe_yaml)
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
    save_file({"torch": torch.get_rng_state()}, str(ckpt / f"rng-{rank}.safetensors"))


def load_checkpoint(ckpt: Path, model: nn.Module, optimizer=None, scheduler=None, rank: int = 0,
                    discriminator: nn.Module | None = None, disc_optimizer=None) -> CheckpointState:
    """Restore weights (and optimizer, scheduler, discriminator, this rank's RNG when given)
    from ``ckpt``."""
    model.load_state_dict(load_file(str(ckpt / "model.safetensors")))
    if discriminator is not None:
        discriminator.load_state_dict(load_file(str(ckpt / "discriminator.safetensors")))
    if optimizer is not None:
        opt = torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=True)
        optimizer.load_state_dict(opt["optimizer"])
        scheduler.load_state_dict(opt["scheduler"])
        if disc_optimizer is not None:
            disc_optimizer.load_state_dict(opt["disc_optimizer"])
    rng = ckpt / f"rng-{rank}.safetensors"
    if rng.is_file():
        torch.set_rng_state(load_file(str(rng))["torch"])
    raw = json.loads((ckpt / "state.json").read_text())
    return CheckpointState(**{k: raw[k] for k in CheckpointState.__dataclass_fields__ if k in raw})
