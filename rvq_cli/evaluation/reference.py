"""FID reference statistics: the Inception pool features' mean and covariance of a set of
original images, computed once (``rvq data stats``) and used by every later evaluation
(``rvq eval --reference-stats``, ``rvq compare``) instead of featurising the originals again.

The file (``.npz``, read without pickles) holds ``mu`` (2048), ``sigma`` (2048 × 2048), ``n``,
``is_originals`` (the Inception Score of the originals) and ``settings``, a JSON string of what the
numbers depend on: the view of the images (size, centre crop, resize method), the feature layer,
the Inception weights (their SHA-256), torch-fidelity's version, and the data (pattern, images).
An evaluation whose view or network differs from the file's is refused, naming the difference:
FID between features of differently prepared images measures the preparation.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..data import RESIZE_METHOD
from ..errors import RvqError, option
from . import fidelity

__all__ = ["FORMAT", "ReferenceStats", "StatsError", "check_stats", "compute_stats", "fid_to_stats", "read_stats",
           "view_settings"]

FORMAT = "rvq-fid-reference/1"
# what must agree between a reference file and an evaluation that uses it
MATCHED = ("format", "feature", "image_size", "crop", "resize", "inception_sha256")


class StatsError(RvqError):
    """Reference statistics that cannot be made or used; the message says why and what to do."""


@dataclass
class ReferenceStats:
    mu: np.ndarray
    sigma: np.ndarray
    n: int
    is_originals: float | None
    settings: dict
    path: Path | None = None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def view_settings(image_size: int, crop: str, inception_file: Path) -> dict:
    """What FID statistics depend on, for images seen at ``image_size`` with the recipe's
    ``data.crop`` (``random``: resized and centre-cropped for evaluation; ``center``: the stored
    image's centre, no resize), by the Inception weights in ``inception_file``."""
    return {"format": FORMAT, "feature": fidelity.FID_FEATURE, "image_size": int(image_size), "crop": "center",
            "resize": RESIZE_METHOD if crop == "random" else "none (centre of the stored image)",
            "images": "uint8, rounded as the PNGs rvq writes", "inception_sha256": _sha256(Path(inception_file)),
            "torch_fidelity": fidelity.library_versions()["torch-fidelity"]}


def stats_from_features(pool: Tensor, logits: Tensor | None, settings: dict) -> ReferenceStats:
    """The statistics of pool features (N, 2048) with torch-fidelity's own estimator."""
    from torch_fidelity import metric_fid

    if pool.shape[0] < 2:
        raise StatsError(f"FID statistics need at least 2 images; the data gave {pool.shape[0]}.")
    s = metric_fid.fid_features_to_statistics(pool.detach().float().cpu())
    is_orig = fidelity.inception_score(logits)[0] if logits is not None and len(logits) else None
    return ReferenceStats(np.asarray(s["mu"]), np.asarray(s["sigma"]), int(pool.shape[0]),
                          is_orig, dict(settings, images_counted=int(pool.shape[0])))


def write_stats(stats: ReferenceStats, out: str | os.PathLike) -> Path:
    out = Path(out)
    if out.suffix != ".npz":
        raise StatsError(f"{out}: the statistics file is an .npz; give a path ending in .npz.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.npz")
    np.savez(tmp, mu=stats.mu, sigma=stats.sigma, n=np.int64(stats.n),
             is_originals=np.float64(np.nan if stats.is_originals is None else stats.is_originals),
             settings=np.array(json.dumps(stats.settings, sort_keys=True)))
    os.replace(tmp, out)
    stats.path = out
    return out


def read_stats(path: str | os.PathLike) -> ReferenceStats:
    """The statistics in ``path`` (written by :func:`write_stats`); a StatsError when unusable."""
    p = Path(path)
    if not p.is_file():
        raise StatsError(f"{p}: no such file. Make it with rvq data stats SHARDS {p} --image-size N.")
    try:
        with np.load(p, allow_pickle=False) as f:
            data = {k: f[k] for k in ("mu", "sigma", "n", "is_originals", "settings")}
        settings = json.loads(str(data["settings"]))
    except (OSError, ValueError, KeyError, EOFError) as err:
        raise StatsError(f"{p} is not a reference statistics file of rvq data stats ({str(err)[:200]}).") from None
    mu, sigma = data["mu"], data["sigma"]
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)) or settings.get("format") != FORMAT:
        raise StatsError(f"{p} is not a reference statistics file of rvq data stats (format "
                         f"{settings.get('format')!r}, mu {mu.shape}, sigma {sigma.shape}).")
    is_orig = float(data["is_originals"])
    return ReferenceStats(mu, sigma, int(data["n"]), None if np.isnan(is_orig) else is_orig, settings, p)


def check_stats(stats: ReferenceStats, wanted: dict) -> None:
    """Refuse ``stats`` unless made with the view and network of ``wanted`` (:func:`view_settings`)."""
    diffs = [f"{k}: {stats.settings.get(k)!r} in the file, {wanted.get(k)!r} here" for k in MATCHED
             if stats.settings.get(k) != wanted.get(k)]
    if diffs:
        raise StatsError(f"{stats.path} was made with other settings than this evaluation ({'; '.join(diffs)}). "
                         "FID between differently prepared images measures the preparation: make the statistics "
                         f"again with rvq data stats at this image size and crop, and the same Inception weights.")


def fid_to_stats(stats: ReferenceStats, pool: Tensor) -> float:
    """FID between the reference statistics and pool features (N, 2048), torch-fidelity's metric."""
    from torch_fidelity import metric_fid

    if pool.shape[0] < 2:
        raise StatsError(f"FID needs at least 2 images; got {pool.shape[0]}.")
    mine = metric_fid.fid_features_to_statistics(pool.detach().float().cpu())
    ref = {k: getattr(stats, k).astype(mine[k].dtype) for k in ("mu", "sigma")}  # torch-fidelity's dtypes
    out = metric_fid.fid_statistics_to_metric(ref, mine, verbose=False)
    return float(out[metric_fid.KEY_METRIC_FID])


def compute_stats(data: str, out: str | os.PathLike, *, image_size: int, crop: str = "random", batch_size: int = 64,
                  num_workers: int = 2, inception_weights: str | os.PathLike | None = None,
                  quiet: bool = False) -> ReferenceStats:
    """Featurise the images of ``data`` (shards, or "demo" for the demo validation set) as rvq eval
    sees them at ``image_size`` and write their statistics to ``out``."""
    from ..config import Recipe
    from ..data import DataError, count_samples, expand_pattern, resolve_data
    from ..data.images import to_uint8
    from ..data.loader import build_loader
    from ..progress import JobProgress

    for name, v, lo in (("image_size", image_size, 8), ("batch_size", batch_size, 1), ("num_workers", num_workers, 0)):
        if v < lo:
            raise StatsError(f"{option(name)} must be at least {lo}, got {v}.")
    if crop not in ("random", "center"):
        raise StatsError(f"crop must be 'random' (resize, then the centre) or 'center' (the stored centre), "
                         f"got {crop!r}.")
    weights = fidelity.find_inception_weights(inception_weights)
    if weights is None:
        raise StatsError(fidelity.missing_weights_message().replace("r-FID and r-IS skipped", "FID statistics need "
                                                                     "Inception"))
    pattern = resolve_data(data, split="val")
    try:
        files = expand_pattern(pattern)
    except DataError as err:
        raise StatsError(str(err)) from None
    recipe = Recipe.model_validate({"data": {"train": pattern, "val": pattern, "image_size": image_size,
                                             "crop": crop, "num_workers": num_workers}})
    from ..hardware import training_device

    device = training_device()
    inception = fidelity.load_inception(weights, device)
    pools, logits = [], []
    loader = build_loader(pattern, recipe, train=False, batch_size=batch_size, num_workers=num_workers)
    with JobProgress("stats", count_samples(files), silent=quiet) as progress, torch.no_grad():
        for batch in loader:
            pool, logit = fidelity.inception_features(inception, to_uint8(batch["image"]))
            pools.append(pool)
            logits.append(logit)
            progress.advance(len(batch["image"]))
    settings = dict(view_settings(image_size, crop, weights), data=str(pattern), shards=len(files))
    stats = stats_from_features(torch.cat(pools) if pools else torch.zeros(0, 2048),
                                torch.cat(logits) if logits else None, settings)
    write_stats(stats, out)
    return stats
