"""Video shards: mp4 encoding (PyAV), clip decoding (decord), and streaming clip batches.

Video shards are webdataset tars with one sample per video: ``KEY.mp4`` (the encoded bytes)
and ``KEY.json`` (``{"fps": int, "frames": int}``); write them with ``write_shards``.

A clip is ``frames`` frames taken every ``stride`` frames, so it spans
``(frames - 1) * stride + 1`` source frames. Training clips start at a random frame (one
``random.Random`` per sample, from the stream's seed and the sample's position); validation
clips are *centred* in the video (start ``(n - span) // 2``), so a validation clip sees the
middle of the action rather than a fade-in. Videos shorter than the span are skipped and
counted, like corrupt ones. Frames are resized and centre-cropped exactly like validation
images (``images.center_crop``: PIL bicubic on the short side, per frame, then the central
square), in training too; training adds an optional horizontal flip of the whole clip.

``video_batches`` streams with the semantics of ``shards.image_batches`` (resampled seeded
training stream per (seed, rank, worker) with exact resume via ``start_batch``; validation
is one pass split over ranks and workers); it reuses that module's shard reader and helpers.
"""

from __future__ import annotations

import io
import operator
import os
import random

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from .images import center_crop
from .shards import ShardStream, expand_pattern

VIDEO_FIELDS = ("mp4",)  # fields of a sample that may hold the encoded video, in the order tried
CRF = 4  # x264 constant rate factor for encode_mp4: near lossless (0 would need a high profile)


def encode_mp4(frames: np.ndarray, fps: int) -> bytes:
    """uint8 frames (T, H, W, 3) -> H.264 mp4 bytes (yuv420p BT.601, CRF 4, one encoder thread, no
    B-frames, so
    the same frames give the same bytes on any machine with the same libx264). H and W must be
    even (4:2:0 chroma)."""
    import av

    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"frames must be uint8 (T, H, W, 3) with T ≥ 1, got {frames.dtype} {frames.shape}")
    _, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"H.264 with yuv420p needs an even height and width, got {h}×{w}")
    if not isinstance(fps, int) or fps < 1:
        raise ValueError(f"fps must be a positive integer, got {fps!r}")
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        # No B-frames and no macroblock tree: with them, small videos encoded differently in the
        # first calls of a process (seen with libx264 in PyAV 18), breaking "same frames, same bytes".
        stream.options = {"crf": str(CRF), "preset": "medium", "threads": "1", "bf": "0", "x264-params": "mbtree=0"}
        for f in frames:
            container.mux(stream.encode(_frame(av, f)))
        container.mux(stream.encode())  # flush the encoder
    return buf.getvalue()


# BT.601 limited range (what decoders assume for untagged SD video), rows: Y, Cb, Cr.
_BT601 = np.array([[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]]) / 255


def _yuv420p(rgb: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) RGB -> PyAV's packed yuv420p array (3H/2, W): Y, then Cb and Cr averaged
    over 2×2 blocks. Done here, not by swscale, so the colour conversion is fixed and documented."""
    h, w, _ = rgb.shape
    ycc = rgb.astype(np.float64) @ _BT601.T + np.array([16.0, 128.0, 128.0])  # (H, W, 3)
    c = ycc[..., 1:].reshape(h // 2, 2, w // 2, 2, 2).mean(axis=(1, 3))  # (H/2, W/2, 2)
    planes = [ycc[..., 0].ravel(), c[..., 0].ravel(), c[..., 1].ravel()]
    return np.clip(np.rint(np.concatenate(planes)), 0, 255).astype(np.uint8).reshape(3 * h // 2, w)


def _frame(av, rgb: np.ndarray):
    """An av.VideoFrame holding ``rgb`` as yuv420p with every byte set, row padding included, so
    the encoder never sees uninitialised memory."""
    h, w, _ = rgb.shape
    yuv = _yuv420p(rgb).ravel()
    frame = av.VideoFrame(w, h, "yuv420p")
    sizes = [h * w, h * w // 4, h * w // 4]
    shapes = [(h, w), (h // 2, w // 2), (h // 2, w // 2)]
    for plane, data, (ph, pw) in zip(frame.planes, np.split(yuv, np.cumsum(sizes)[:2]), shapes):
        buf = np.frombuffer(plane, np.uint8)
        buf[:] = 0
        buf[: ph * plane.line_size].reshape(ph, plane.line_size)[:, :pw] = data.reshape(ph, pw)
    return frame


def clip_span(frames: int, stride: int) -> int:
    """Source frames covered by a clip of ``frames`` frames taken every ``stride`` frames."""
    return (frames - 1) * stride + 1


def video_length(data: bytes) -> int:
    """Number of frames of an mp4 in memory (decord's count)."""
    import decord

    return len(decord.VideoReader(io.BytesIO(data), num_threads=1))


def decode_clip(data: bytes, *, frames: int, stride: int = 1, start: int | None = None,
                rng: random.Random | None = None) -> np.ndarray:
    """mp4 bytes -> uint8 (frames, H, W, 3): frames ``start, start + stride, ...``.

    ``start`` given: that start. Else ``rng`` given: a uniform random start (training). Else the
    centred start ``(n - span) // 2`` (validation). Raises ValueError when the video is too short
    for the clip, and whatever decord raises for undecodable bytes."""
    import decord

    vr = decord.VideoReader(io.BytesIO(data), num_threads=1)
    n, span = len(vr), clip_span(frames, stride)
    if n < span:
        raise ValueError(f"video has {n} frames, a clip of {frames} frames at stride {stride} needs {span}")
    if start is None:
        start = rng.randint(0, n - span) if rng is not None else (n - span) // 2
    if not 0 <= start <= n - span:
        raise ValueError(f"start {start} is outside 0..{n - span} for a {n}-frame video and a {span}-frame clip")
    indices = list(range(start, start + span, stride))
    try:
        clip = vr.get_batch(indices).asnumpy()  # (T, H, W, 3)
    except decord.DECORDError as err:
        if "must exactly match" not in str(err):
            raise
        clip = _decode_with_pyav(data, indices)  # decord 0.6.0 fails on some small frame sizes (e.g. 24×24)
    assert clip.shape[0] == frames and clip.dtype == np.uint8, clip.shape
    return clip


def _decode_with_pyav(data: bytes, indices: list[int]) -> np.ndarray:
    """Frames ``indices`` (ascending) of an mp4 in memory, decoded by PyAV: the fallback for frame
    sizes whose buffers decord 0.6.0 mis-sizes ("The size must exactly match")."""
    import av

    wanted, out = set(indices), {}
    with av.open(io.BytesIO(data)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in wanted:
                out[i] = frame.to_ndarray(format="rgb24")
            if i >= indices[-1]:
                break
    return np.stack([out[i] for i in indices])


def resize_center_crop(clip: np.ndarray, size: int) -> np.ndarray:
    """uint8 (T, H, W, 3) -> (T, size, size, 3): every frame resized so its short side is
    ``size`` (PIL bicubic, as ``images.center_crop``; the same geometry for every frame), then
    the central square."""
    return np.stack([center_crop(Image.fromarray(f), size) for f in clip])


def sample_video(sample: dict) -> bytes:
    """The encoded video bytes of a webdataset sample; raises KeyError when it has none."""
    for field in VIDEO_FIELDS:
        if field in sample:
            return sample[field]
    have = ", ".join(k for k in sample if not k.startswith("__")) or "nothing"
    raise KeyError(f"sample {sample.get('__key__')!r} has no video field ({'/'.join(VIDEO_FIELDS)}); it has {have}")


def to_video_batch(clips: list[np.ndarray]) -> torch.Tensor:
    """uint8 (T, H, W, 3) clips -> float32 (B, 3, T, H, W) in [-1, 1] (0 -> -1, 255 -> 1)."""
    a = np.ascontiguousarray(np.stack(clips).transpose(0, 4, 1, 2, 3))  # (B, 3, T, H, W)
    return torch.from_numpy(a).float().div_(127.5).sub_(1.0)


class VideoShardStream(ShardStream):
    """Batches of decoded clips from video shards, for one rank; see ``video_batches``."""

    field, what = "video", "video clips"

    def __init__(self, shards: list[str], *, frames: int, stride: int, image_size: int, random_flip: bool, **kw):
        super().__init__(shards, **kw)
        self.frames, self.stride, self.image_size, self.random_flip = frames, stride, image_size, random_flip
        self.hint = (f"Are these video shards (mp4 fields) with videos of at least {clip_span(frames, stride)} "
                     f"frames ({frames} frames at stride {stride})?")

    def _decode(self, sample: dict, w: int, n: int) -> tuple[np.ndarray, bool]:
        """The raw clip of the n-th sample of stream w and whether to flip it (random start and
        flip in training, from the sample's own RNG; centred clip in validation)."""
        rng = self._rng(w, n) if self.train else None
        clip = decode_clip(sample_video(sample), frames=self.frames, stride=self.stride, rng=rng)
        return clip, rng is not None and self.random_flip and rng.random() < 0.5

    def _finish(self, item: tuple[np.ndarray, bool], w: int, n: int) -> np.ndarray:
        clip, flip = item
        clip = resize_center_crop(clip, self.image_size)  # (T, S, S, 3)
        return clip[:, :, ::-1] if flip else clip

    def _collate(self, arrays: list) -> torch.Tensor:
        return to_video_batch(arrays)


def video_batches(pattern: str | os.PathLike, *, frames: int, stride: int = 1, image_size: int, batch_size: int,
                  train: bool, seed: int, rank: int = 0, world_size: int = 1, num_workers: int = 0,
                  random_flip: bool = False, shuffle_buffer: int = 100, start_batch: int = 0) -> DataLoader:
    """Batches ``{"video": float32 (B, 3, T, S, S) in [-1, 1], "key": list[str], "skipped": int}``
    (T = ``frames``, S = ``image_size``) from the video shards named by ``pattern``, for process
    ``rank`` of ``world_size``.

    ``train=True``: an infinite stream; shards resampled per (rank, worker) with a seeded RNG, a
    shuffle buffer of ``shuffle_buffer`` samples (0 or 1: none; it holds encoded bytes), a random
    clip start per sample and (``random_flip``) a horizontal flip of the whole clip. The same
    arguments give the same batches; ``start_batch=k`` yields exactly batches k, k+1, ...

    ``train=False``: one pass over this rank's shards (r, r+W, ...), in order, centred clips; each
    worker's last partial batch is kept. Ranks beyond the number of shards get no batches.

    Corrupt, video-less and too-short samples are skipped and counted in ``skipped`` (never fatal
    unless 1,000 in a row fail), exactly as in ``image_batches``.
    """
    for name, v, lo in (("frames", frames, 1), ("stride", stride, 1), ("image_size", image_size, 1),
                        ("batch_size", batch_size, 1), ("world_size", world_size, 1), ("num_workers", num_workers, 0),
                        ("shuffle_buffer", shuffle_buffer, 0), ("start_batch", start_batch, 0)):
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise ValueError(f"{name} must be an integer ≥ {lo}, got {v!r}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in 0..{world_size - 1} for world_size {world_size}, got {rank}")
    if start_batch and not train:
        raise ValueError("start_batch resumes a training stream; a validation pass always starts at the beginning")
    if os.fspath(pattern) == "demo":  # the built-in demo video shards (default cache)
        from .video_demo import demo_video_shards

        d = demo_video_shards()
        pattern = d.train if train else d.val
    seed, rank = operator.index(seed), operator.index(rank)  # plain ints: seeds are hashed from their repr
    ds = VideoShardStream(expand_pattern(pattern), frames=frames, stride=stride, image_size=image_size,
                          batch_size=batch_size, train=train, seed=seed, rank=rank, world_size=world_size,
                          random_flip=random_flip, shuffle_buffer=shuffle_buffer, start_batch=start_batch)
    return DataLoader(ds, batch_size=None, num_workers=num_workers, generator=torch.Generator().manual_seed(seed))
