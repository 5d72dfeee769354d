"""``rvq decode``: token shards -> images (video tokenizers: mp4 clips) named by their source keys.

Every sample is checked before any image is written: written by this tokenizer (the
id in its json), indices inside the codebook. Decoding runs exactly the model's post-quantizer
path (``VQTokenizer.decode_indices``), so an image decoded from ``encode(x)`` is bit for bit the
eval-mode forward reconstruction of ``x``. PNGs are written to a temporary name and renamed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image

from ..data.images import to_uint8
from ..errors import option
from ..files import atomic_path, write_bytes_atomic
from ..hardware import training_device
from ..inference import check_precision, inference_settings
from ..models import VQTokenizer
from ..progress import JobProgress
from ..runs import load_tokenizer
from .format import TokenError, TokenSample, check_sample, read_token_samples, token_files


@dataclass
class DecodeReport:
    out: Path
    count: int
    tokenizer: str


@torch.no_grad()
def decode_tokens(model: VQTokenizer, tokens: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Images (B, C, H, W) (video: clips (B, C, T, H, W)) in about [-1, 1] (unclamped) from tokens
    (B, h, w) (video: (B, T, h, w))."""
    t = torch.as_tensor(np.asarray(tokens).astype(np.int64) if isinstance(tokens, np.ndarray) else tokens)
    return model.decode_indices(t.long().to(model.device)).float()


def _image_path(out: Path, key: str, suffix: str = ".png") -> Path:
    """OUT/KEY.png (or .mp4); a key with slashes becomes sub-folders, but never leaves OUT."""
    parts = PurePosixPath(key).parts
    if not parts or key.startswith("/") or any(p in ("..", ".") for p in parts):
        raise TokenError(f"sample key {key!r} cannot be used as a file name under {out}.")
    return out.joinpath(*parts).with_name(parts[-1] + suffix)


DEFAULT_FPS = 8  # clips whose source recorded no frame rate


def clip_fps(meta: dict) -> int:
    """Frame rate of a decoded clip: the source video's fps divided by the clip's frame stride."""
    fps = (meta.get("source") or {}).get("fps") or DEFAULT_FPS
    stride = (meta.get("source") or {}).get("stride") or 1
    return max(1, round(float(fps) / int(stride)))


def save_mp4(clip: torch.Tensor, path: Path, fps: int) -> None:
    """One clip (C, T, H, W) in [-1, 1] as an H.264 mp4 (8-bit frames), written atomically."""
    from ..data.mp4 import encode_mp4

    frames = to_uint8(clip.transpose(0, 1)).permute(0, 2, 3, 1).cpu().numpy()  # (T, H, W, C)
    write_bytes_atomic(path, encode_mp4(frames, fps=fps))


def save_png(image: torch.Tensor, path: Path) -> None:
    """One image (C, H, W) in [-1, 1] as an 8-bit PNG, written atomically."""
    a = to_uint8(image[None])[0].permute(1, 2, 0).cpu().numpy()  # (H, W, C)
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).save(tmp, format="PNG")


def _batches(samples: Iterator[TokenSample], batch_size: int) -> Iterator[list[TokenSample]]:
    """Runs of at most ``batch_size`` consecutive samples with the same grid shape."""
    run: list[TokenSample] = []
    for s in samples:
        if run and (len(run) == batch_size or s.tokens.shape != run[0].tokens.shape):
            yield run
            run = []
        run.append(s)
    if run:
        yield run


def _check_all(files: list[str], tokenizer: str, codebook_size: int, out: Path, video: bool = False) -> int:
    """Check every sample (tokenizer, index range, an (h, w) grid or a (T, h, w) one for video,
    a usable and unique key) before anything is written; token arrays are small, so this pass
    costs little next to decoding. Returns the count."""
    seen: set[str] = set()
    for s in read_token_samples(files):
        check_sample(s, tokenizer, codebook_size)
        if s.tokens.ndim != (3 if video else 2):
            what = "a video tokenizer decodes (T, h, w) grids" if video else "an image tokenizer decodes (h, w) grids"
            raise TokenError(f"{s.url}: sample {s.key!r} has tokens of shape {s.tokens.shape}; {what}.")
        _image_path(out, s.key)
        if s.key in seen:
            raise TokenError(f"{s.url}: sample key {s.key!r} occurs twice in the token shards; its images would "
                             "overwrite each other. Decode the shards separately.")
        seen.add(s.key)
    return len(seen)


def decode_dataset(checkpoint: str | os.PathLike, tokens: str | os.PathLike, out: str | os.PathLike, *,
                   batch_size: int = 32, quiet: bool = False, precision: str | None = None) -> DecodeReport:
    """Decode the token shards ``tokens`` (an ``rvq encode`` folder or a shard pattern) with the
    tokenizer at ``checkpoint`` into ``out/KEY.png`` (video tokenizers: ``out/KEY.mp4``)."""
    if batch_size < 1:
        raise TokenError(f"{option('batch_size')} must be at least 1, got {batch_size}.")
    files, manifest = token_files(tokens)
    device = training_device()
    check_precision(precision)
    # the weights that made the tokens: the manifest says which (older manifests: the default)
    made_by = {"ema": True, "trained": False}.get((manifest or {}).get("weights"))
    tok = load_tokenizer(checkpoint, device=device, ema=made_by)
    settings = inference_settings(tok, torch.device(device), precision)
    K = tok.model.quantize.codebook_size
    if manifest is not None and manifest.get("tokenizer") != tok.tokenizer_id:
        raise TokenError(f"{tokens} holds tokens of tokenizer {manifest.get('tokenizer')!r} (checkpoint "
                         f"{manifest.get('checkpoint')}), but {tok.checkpoint} is tokenizer {tok.tokenizer_id!r}. "
                         "Decode with the checkpoint that encoded them.")
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise TokenError(f"{out} is a file; OUT must be a folder (it is created if missing).")
    video = tok.recipe.model.video
    total = _check_all(files, tok.tokenizer_id, K, out, video)  # refuse before writing anything
    n = 0
    with JobProgress("decode", total, silent=quiet) as progress:
        for run in _batches(read_token_samples(files), batch_size):
            with settings.autocast(torch.device(device)):
                images = decode_tokens(tok.model, np.stack([s.tokens for s in run]))
            for s, image in zip(run, images):
                if video:
                    save_mp4(image, _image_path(out, s.key, ".mp4"), clip_fps(s.meta))
                else:
                    save_png(image, _image_path(out, s.key))
            n += len(run)
            progress.advance(len(run))
    return DecodeReport(out, n, tok.tokenizer_id)
