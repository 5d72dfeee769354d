"""r-FID and r-IS with torch-fidelity's own InceptionV3 and metric functions, weights loaded safely.

torch-fidelity would download its Inception weights, or unpickle a given file with
``torch.load(..., weights_only=False)``; neither is acceptable here. This module reads the weights
itself (safetensors, or ``torch.load(..., weights_only=True)``) and hands the tensors to
torch-fidelity's feature extractor, so features and metrics are torch-fidelity's, bit for bit.
Features are computed per process (:func:`inception_features`); the metrics take gathered features.
"""

from __future__ import annotations

import os
import pickle
import threading
from pathlib import Path
from urllib.parse import urlparse

import torch
from safetensors.torch import load_file
from torch import Tensor

from ..errors import RvqError, option

# torch-fidelity (with torchvision, which pulls in torch._dynamo) takes seconds to import: it is
# imported where the metrics run, so that `rvq eval`, `rvq compare` and the bad-input checks
# before them do not wait for it. The URL is torch-fidelity's URL_INCEPTION_V3 (a test checks).
INCEPTION_URL: str = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
INCEPTION_FILENAME: str = os.path.basename(urlparse(INCEPTION_URL).path)
FID_FEATURE = "2048"  # torch-fidelity's default feature layer for FID (pool3 features)
IS_FEATURE = "logits_unbiased"  # ... and for the Inception Score
WEIGHTS_ENV = "RVQ_INCEPTION_WEIGHTS"
_EXTRACTOR_NAME = "inception-v3-compat"  # the name torch-fidelity registers this extractor under
_PATCH_LOCK = threading.Lock()


class FidelityError(RvqError):
    """Unusable Inception weights: one-paragraph message for users."""


def _expected() -> str:
    return (f"It should be torch-fidelity's pt_inception-2015-12-05 InceptionV3 weights ({INCEPTION_FILENAME}, "
            f"downloadable from {INCEPTION_URL}), or a .safetensors copy of that state dict.")


def default_weights_path() -> Path:
    """Where torch-fidelity's download would cache the weights: torch.hub.get_dir()/checkpoints/INCEPTION_FILENAME
    (honours $TORCH_HOME)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILENAME


def _existing_file(path: str | os.PathLike, origin: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        what = "does not exist" if not p.exists() else "is not a file"
        raise FidelityError(f"The Inception weights file {p} ({origin}) {what}. {_expected()} Point {origin} at "
                            f"that file, or leave it unset to use {default_weights_path()}.")
    return p


def find_inception_weights(path: str | os.PathLike | None = None) -> Path | None:
    """An explicit path (must exist and be a file, else FidelityError naming it), else the env var
    RVQ_INCEPTION_WEIGHTS if set (same check), else default_weights_path() if it exists, else None."""
    if path is not None:
        return _existing_file(path, option("inception_weights"))
    if os.environ.get(WEIGHTS_ENV):
        return _existing_file(os.environ[WEIGHTS_ENV], f"${WEIGHTS_ENV}")
    default = default_weights_path()
    return default if default.is_file() else None


def missing_weights_message() -> str:
    """One line saying r-FID and r-IS were skipped, and how to provide the weights."""
    return (f"r-FID and r-IS skipped: torch-fidelity's Inception weights were not found; download {INCEPTION_URL} "
            f"to {default_weights_path()}, or pass {option('inception_weights')} PATH / set {WEIGHTS_ENV}.")


def _read_failure(exc: Exception) -> str:
    """Why an untrusted file could not be read, in words. torch's own advice for a refused pickle (retry with
    weights_only=False) is exactly what must not be done, so only its one-line diagnosis is passed on."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if isinstance(exc, pickle.UnpicklingError) and lines and lines[0].startswith("Weights only load failed"):
        diagnosis = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), "")
        if "GLOBAL" in diagnosis:
            return (f"it is a pickle that refers to code, which would run if it were loaded ({diagnosis.rstrip('.')}); "
                    "rvq loads pickles only with torch.load(weights_only=True), which refused it")
        lines = [diagnosis or "torch.load(weights_only=True) refused it"]
    detail = (lines or ["no details"])[0][:200].rstrip(".")
    return f"it is truncated, corrupt or not a weights file ({type(exc).__name__}: {detail})"


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """The tensors in ``path``, read without ever running pickled code."""
    try:
        if path.suffix.lower() == ".safetensors":
            state = load_file(path, device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any decoding failure of an untrusted file: missing, corrupt, refused pickle
        raise FidelityError(f"Could not read {path} as Inception weights: {_read_failure(exc)}. "
                            f"{_expected()}") from exc
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise FidelityError(f"{path} does not hold a state dict (a mapping of parameter names to tensors) but a "
                            f"{type(state).__name__}. {_expected()}")
    return state


def _build_extractor(state: dict[str, Tensor]) -> torch.nn.Module:
    """torch-fidelity's FeatureExtractorInceptionV3 built around ``state`` (strict load: every key, every shape)."""
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    def _ours(*_args, **_kwargs) -> dict[str, Tensor]:
        return state

    # torch-fidelity's constructor either downloads (module-level load_state_dict_from_url) or unpickles a path
    # with weights_only=False. Swapping the module-level downloader for one returning our safely-read dict lets us
    # keep torch-fidelity's own layers, load_state_dict and dtype handling without either. The lock keeps
    # concurrent threads from seeing each other's dicts; finally restores the original even if loading fails.
    with _PATCH_LOCK:
        original = tfi.load_state_dict_from_url
        tfi.load_state_dict_from_url = _ours
        try:
            return tfi.FeatureExtractorInceptionV3(_EXTRACTOR_NAME, [FID_FEATURE, IS_FEATURE],
                                                   feature_extractor_weights_path=None)
        finally:
            tfi.load_state_dict_from_url = original


def load_inception(path: str | os.PathLike, device: str | torch.device = "cpu") -> torch.nn.Module:
    """torch-fidelity's FeatureExtractorInceptionV3 (features [FID_FEATURE, IS_FEATURE]) with the weights at
    ``path`` (.safetensors, or a torch.save state dict read with weights_only=True), in eval mode on ``device``
    with requires_grad False. Raises FidelityError when the file is not those weights."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FidelityError(f"The Inception weights file {p} does not exist or is not a file. {_expected()}")
    state = _read_state_dict(p)
    try:
        model = _build_extractor(state)
    except RuntimeError as exc:  # load_state_dict: missing/unexpected keys or wrong shapes
        detail = " ".join(str(exc).split()).rstrip(".")
        detail = detail if len(detail) <= 400 else detail[:400] + " ..."
        raise FidelityError(f"{p} is not a state dict of torch-fidelity's InceptionV3: {detail}. "
                            f"{_expected()}") from exc
    return model.to(device).eval().requires_grad_(False)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def inception_features(model: torch.nn.Module, images_uint8: Tensor, batch_size: int = 64) -> tuple[Tensor, Tensor]:
    """(pool features (N, 2048) float32, unbiased logits (N, 1008) float32) on CPU, computed in chunks of
    ``batch_size`` on the model's device."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    device, pools, logits = _device(model), [], []
    for chunk in images_uint8.split(batch_size):
        pool, logit = model(chunk.to(device))
        pools.append(pool.float().cpu())
        logits.append(logit.float().cpu())
    if not pools:
        return torch.zeros(0, 2048), torch.zeros(0, model.fc.out_features)
    return torch.cat(pools), torch.cat(logits)


def fid_from_features(a: Tensor, b: Tensor) -> float:
    """FID between two feature sets (N, 2048), with torch-fidelity's fid_features_to_statistics and
    fid_statistics_to_metric. Features are taken as float32 on CPU, as torch-fidelity's own pipeline has them."""
    for name, f in (("a", a), ("b", b)):
        if f.dim() != 2 or f.shape[0] < 2:
            raise ValueError(f"FID needs at least 2 feature rows (N, D) per set; {name} has shape {tuple(f.shape)}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"FID feature sets differ in width: {a.shape[1]} vs {b.shape[1]}")
    from torch_fidelity import metric_fid

    stats = [metric_fid.fid_features_to_statistics(f.detach().float().cpu()) for f in (a, b)]
    out = metric_fid.fid_statistics_to_metric(stats[0], stats[1], verbose=False)
    return float(out[metric_fid.KEY_METRIC_FID])


def inception_score(logits: Tensor, splits: int = 10) -> tuple[float, float]:
    """(mean, std) of the Inception Score with torch-fidelity's isc_features_to_metric (shuffled with its default
    seed); uses min(splits, N) splits, since an empty split would give NaN."""
    if logits.dim() != 2 or logits.shape[0] < 1:
        raise ValueError(f"Inception Score needs logits of shape (N, C) with N >= 1, got {tuple(logits.shape)}")
    if splits < 1:
        raise ValueError(f"splits must be at least 1, got {splits}")
    from torch_fidelity import metric_isc

    feats = logits.detach().float().cpu()
    out = metric_isc.isc_features_to_metric(feats, splits=min(splits, feats.shape[0]), shuffle=True)
    return float(out[metric_isc.KEY_METRIC_ISC_MEAN]), float(out[metric_isc.KEY_METRIC_ISC_STD])


def library_versions() -> dict[str, str]:
    """Versions of the libraries the metrics depend on, for reports."""
    import torch_fidelity
    import torchvision

    return {"torch-fidelity": torch_fidelity.__version__, "torch": torch.__version__,
            "torchvision": torchvision.__version__}
