"""Experiment trackers through Accelerate (``output.log_with``): TensorBoard, Weights & Biases and
MLflow get every logged metric, the resolved recipe as the run's configuration, and the
reconstruction grid each time the trainer draws one (``train.sample_every``).

Where each writes, unless its own environment says otherwise:

- tensorboard: ``RUN_DIR/rvq/`` (event files; ``tensorboard --logdir RUN_DIR``);
- wandb: ``RUN_DIR/wandb/``, the project ``output.project`` and the run named after the run
  folder; ``WANDB_MODE=offline`` keeps it on the machine (``wandb sync`` uploads it later);
- mlflow: ``$MLFLOW_TRACKING_URI`` when set (a server, or ``sqlite:///mlflow.db``), else a file
  store in ``RUN_DIR/mlruns`` (MLflow 3 keeps file stores in maintenance and asks them to opt in:
  rvq sets ``MLFLOW_ALLOW_FILE_STORE=true`` for that default; ``mlflow ui --backend-store-uri
  RUN_DIR/mlruns``), the experiment ``output.project``.

``metrics.jsonl`` and the PNG grids in ``RUN_DIR/samples/`` are written either way.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import torch

__all__ = ["TRACKERS", "check_trackers", "init_trackers", "log_grid", "trackers_of"]

TRACKERS = ("tensorboard", "wandb", "mlflow")
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
GRID = "reconstructions"


def trackers_of(output) -> list[str]:
    """The trackers a recipe's ``output`` section asks for (``tensorboard: true`` is one of them)."""
    names = list(dict.fromkeys(output.log_with))
    if output.tensorboard and "tensorboard" not in names:
        names.insert(0, "tensorboard")
    return names


def check_trackers(names: list[str]) -> str | None:
    """A message naming the trackers whose package is not installed (None: all are)."""
    missing = [n for n in names if importlib.util.find_spec(PACKAGES[n]) is None]
    if not missing:
        return None
    return (f"output.log_with names {', '.join(missing)}, whose package{'s are' if len(missing) > 1 else ' is'} not "
            f"installed: pip install {' '.join(PACKAGES[n] for n in missing)} (or leave "
            f"{'them' if len(missing) > 1 else 'it'} out of output.log_with; metrics.jsonl is always written).")


def _config(flat: dict) -> dict:
    """The recipe as tracker hyperparameters: scalars as they are, anything else as JSON text."""
    return {k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v) for k, v in flat.items()}


def init_trackers(acc, names: list[str], run_dir: Path, project: str, flat_recipe: dict) -> None:
    """Start the trackers (main process) with the recipe as their configuration."""
    if not names:
        return
    kwargs = {}
    if "wandb" in names:
        (run_dir / "wandb").mkdir(parents=True, exist_ok=True)
        kwargs["wandb"] = {"dir": str(run_dir), "name": run_dir.name}
    if "mlflow" in names:
        if not os.environ.get("MLFLOW_TRACKING_URI"):  # rvq's default: a file store in the run folder
            import mlflow

            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks file stores to opt in
            mlflow.set_tracking_uri((run_dir / "mlruns").resolve().as_uri())
        kwargs["mlflow"] = {"run_name": run_dir.name}
    acc.init_trackers(project, config=_config(flat_recipe), init_kwargs=kwargs)


def log_grid(acc, grid: torch.Tensor, step: int) -> None:
    """The reconstruction grid (C, H, W) in [0, 1] to every tracker, as an image at ``step``."""
    hwc = (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    for tracker in acc.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({GRID: grid[None].float().cpu()}, step=step, dataformats="NCHW")
        elif tracker.name == "wandb":
            tracker.log_images({GRID: [hwc]}, step=step)
        elif tracker.name == "mlflow":
            import mlflow

            mlflow.log_image(np.ascontiguousarray(hwc), key=GRID, step=step)
