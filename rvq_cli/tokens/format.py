"""Token shards: the format ``rvq encode`` writes and ``rvq decode`` (and stage-2 loaders) read.

A token shard is a webdataset tar with one sample per source image:
  KEY.tokens.npy  the code indices on the latent grid, shape (h, w) for images; uint16 when the
                  codebook has at most 65,536 codes, else int32 (NumPy .npy, never pickled)
  KEY.json        {"key": source key, "tokenizer": id, "grid": [h, w], "codebook_size": K,
                   "cls": label (when the source has one), "source": the source sample's json}
The folder also holds ``manifest.json`` (tokenizer, checkpoint, grid, dtype, shard list, count,
skipped samples). Reading never unpickles: ``np.load(..., allow_pickle=False)``.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import webdataset as wds
from webdataset.tariterators import group_by_keys, tar_file_expander

from ..data.format import DataError, expand_pattern
from ..errors import RvqError

FORMAT = "rvq-tokens/1"
TOKENS, META, MANIFEST = "tokens.npy", "json", "manifest.json"
SHARD_GLOB = "tokens-*.tar"


class TokenError(RvqError):
    """Token shards that cannot be used with this tokenizer; the message says why."""


def token_dtype(codebook_size: int) -> np.dtype:
    """uint16 when every index fits (K ≤ 65,536), else int32."""
    return np.dtype(np.uint16) if codebook_size <= 1 << 16 else np.dtype(np.int32)


def tokens_to_npy(indices: np.ndarray, codebook_size: int) -> bytes:
    """Indices (any integer array) as .npy bytes of the codebook's token dtype."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(indices).astype(token_dtype(codebook_size)), allow_pickle=False)
    return buf.getvalue()


def npy_to_tokens(data: bytes, where: str) -> np.ndarray:
    """.npy bytes -> an integer array; refuses pickled (object) arrays and non-integer data."""
    try:
        a = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise TokenError(f"{where}: {TOKENS} is not a readable .npy array of token indices ({err}). "
                         "Token shards are written by `rvq encode`.") from None
    if not isinstance(a, np.ndarray) or a.dtype.kind not in "iu":
        raise TokenError(f"{where}: {TOKENS} holds {getattr(a, 'dtype', type(a).__name__)} data, not integer "
                         "token indices.")
    return a


@dataclass
class TokenSample:
    key: str
    tokens: np.ndarray  # (h, w) integer indices
    meta: dict  # the sample's json
    url: str  # the shard it came from


def token_files(src: str | os.PathLike) -> tuple[list[str], dict | None]:
    """The token shards ``src`` names (an ``rvq encode`` output folder, or a shard pattern) and
    the folder's manifest (None for a pattern)."""
    p = Path(os.path.expanduser(os.fspath(src)))
    if p.is_dir():
        manifest = read_manifest(p)
        if manifest is None:
            raise TokenError(f"{p} has no {MANIFEST}: it is not a finished `rvq encode` output folder. Run (or "
                             "finish) `rvq encode` into it, or pass the token shards as a pattern, e.g. "
                             f"{p}/{SHARD_GLOB}.")
        files = [str(p / name) for name in manifest.get("shards", [])]
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise TokenError(f"{p / MANIFEST} lists {len(missing)} token shard(s) that do not exist (e.g. "
                             f"{missing[0]}); the folder is incomplete. Re-run `rvq encode` into it.")
        return files, manifest
    try:
        return expand_pattern(src), None
    except DataError as err:
        raise TokenError(str(err)) from None


def read_manifest(folder: Path) -> dict | None:
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, OSError) as err:
        raise TokenError(f"{path} is unreadable ({err}); re-run `rvq encode` into {folder}.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise TokenError(f"{path} is not an rvq token manifest (expected format {FORMAT!r}).")
    return manifest


def _reraise(exn: Exception) -> bool:
    raise exn


def read_token_samples(files: list[str]) -> Iterator[TokenSample]:
    """Token samples of ``files`` in order; an unreadable shard or sample raises TokenError."""
    for url in files:
        try:
            with wds.gopen(url, "rb") as stream:
                for s in group_by_keys(tar_file_expander([{"url": url, "stream": stream}], handler=_reraise),
                                       handler=_reraise):
                    yield _parse(s, url)
        except TokenError:
            raise
        except Exception as err:  # tarfile/webdataset errors: truncated or not a tar
            raise TokenError(f"{url} is not a readable token shard ({type(err).__name__}: {err}).") from None


def _parse(s: dict, url: str) -> TokenSample:
    key = s["__key__"]
    where = f"{url}: sample {key!r}"
    if TOKENS not in s or META not in s:
        have = ", ".join(k for k in s if not k.startswith("__")) or "nothing"
        raise TokenError(f"{where} has no {TOKENS} and {META} (it has {have}); is this a token shard written by "
                         "`rvq encode`?")
    try:
        meta = json.loads(s[META])
    except ValueError as err:
        raise TokenError(f"{where}: unreadable json ({err}).") from None
    if not isinstance(meta, dict):
        raise TokenError(f"{where}: the json must be an object.")
    return TokenSample(key, npy_to_tokens(s[TOKENS], where), meta, url)


def check_sample(sample: TokenSample, tokenizer: str, codebook_size: int) -> None:
    """Refuse tokens from another tokenizer or out of the codebook's range."""
    where = f"{sample.url}: sample {sample.key!r}"
    made_by = sample.meta.get("tokenizer")
    if made_by != tokenizer:
        raise TokenError(f"{where} was written by tokenizer {made_by!r}, but this checkpoint is tokenizer "
                         f"{tokenizer!r}: its codes would decode to the wrong images. Decode with the checkpoint "
                         "that encoded them (its id is in the token folder's manifest.json).")
    t = sample.tokens
    if t.size and (int(t.min()) < 0 or int(t.max()) >= codebook_size):
        raise TokenError(f"{where} has indices {int(t.min())}..{int(t.max())}, outside this codebook's 0.."
                         f"{codebook_size - 1}; the shard is damaged or not from this tokenizer.")
