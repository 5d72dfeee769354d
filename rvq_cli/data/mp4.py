"""mp4 in memory: encoding frames as H.264 (PyAV) and decoding clips of frames (decord, or PyAV).

Video shards hold one ``KEY.mp4`` per video (the encoded bytes, ``encode_mp4``). A clip is
``frames`` frames taken every ``stride`` frames, so it spans ``(frames - 1) * stride + 1``
source frames (``clip_span``); ``decode_clip`` decodes one at a given, random or centred start.

Decoding uses decord where it is installed (it has wheels for x86-64 Linux and Windows only) and
PyAV elsewhere (Apple Silicon, aarch64 Linux such as GH200), chosen once per process
(:func:`video_decoder`; ``RVQ_VIDEO_DECODER=pyav`` or ``decord`` chooses by hand). Both give the
same frames of an rvq-written mp4 (tested).
"""

from __future__ import annotations

import functools
import io
import os
import random

import numpy as np

from .format import DataError

DECODERS = ("decord", "pyav")

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


@functools.cache
def video_decoder() -> str:
    """The clip decoder of this process: ``$RVQ_VIDEO_DECODER`` when set, else decord when it
    imports, else PyAV."""
    chosen = os.environ.get("RVQ_VIDEO_DECODER")
    if chosen:
        if chosen not in DECODERS:
            raise DataError(f"RVQ_VIDEO_DECODER={chosen!r}: choose one of {', '.join(DECODERS)}, or unset it "
                            "(decord where it is installed, else PyAV).")
        return chosen
    try:
        import decord  # noqa: F401
    except ImportError:
        return "pyav"
    return "decord"


def _pyav_frames(data: bytes, last: int | None = None) -> list[np.ndarray]:
    """Every frame of an mp4 in memory (up to index ``last``), RGB uint8, decoded by PyAV."""
    import av

    out = []
    try:
        with av.open(io.BytesIO(data)) as container:
            for i, frame in enumerate(container.decode(video=0)):
                out.append(frame.to_ndarray(format="rgb24"))
                if last is not None and i >= last:
                    break
    except av.FFmpegError as err:  # the same kind of error as decord's for bytes it cannot decode
        raise RuntimeError(f"PyAV cannot decode the mp4: {err}") from None
    return out


def video_length(data: bytes) -> int:
    """Number of frames of an mp4 in memory."""
    if video_decoder() == "pyav":
        return len(_pyav_frames(data))
    import decord

    return len(decord.VideoReader(io.BytesIO(data), num_threads=1))


def decode_clip(data: bytes, *, frames: int, stride: int = 1, start: int | None = None,
                rng: random.Random | None = None) -> np.ndarray:
    """mp4 bytes -> uint8 (frames, H, W, 3): frames ``start, start + stride, ...``.

    ``start`` given: that start. Else ``rng`` given: a uniform random start (training). Else the
    centred start ``(n - span) // 2`` (validation). Raises ValueError when the video is too short
    for the clip, and whatever the decoder raises for undecodable bytes."""
    if video_decoder() == "pyav":
        every = _pyav_frames(data)
        indices = _clip_indices(len(every), frames, stride, start, rng)
        return np.stack([every[i] for i in indices])
    import decord

    vr = decord.VideoReader(io.BytesIO(data), num_threads=1)
    indices = _clip_indices(len(vr), frames, stride, start, rng)
    try:
        clip = vr.get_batch(indices).asnumpy()  # (T, H, W, 3)
    except decord.DECORDError as err:
        if "must exactly match" not in str(err):
            raise
        clip = _decode_with_pyav(data, indices)  # decord 0.6.0 fails on some small frame sizes (e.g. 24×24)
    assert clip.shape[0] == frames and clip.dtype == np.uint8, clip.shape
    return clip


def _clip_indices(n: int, frames: int, stride: int, start: int | None, rng: random.Random | None) -> list[int]:
    """The frame indices of a clip of an ``n``-frame video (see :func:`decode_clip`)."""
    span = clip_span(frames, stride)
    if n < span:
        raise ValueError(f"video has {n} frames, a clip of {frames} frames at stride {stride} needs {span}")
    if start is None:
        start = rng.randint(0, n - span) if rng is not None else (n - span) // 2
    if not 0 <= start <= n - span:
        raise ValueError(f"start {start} is outside 0..{n - span} for a {n}-frame video and a {span}-frame clip")
    return list(range(start, start + span, stride))


def _decode_with_pyav(data: bytes, indices: list[int]) -> np.ndarray:
    """Frames ``indices`` (ascending) of an mp4 in memory, decoded by PyAV: the fallback for frame
    sizes whose buffers decord 0.6.0 mis-sizes ("The size must exactly match")."""
    every = _pyav_frames(data, last=indices[-1])
    return np.stack([every[i] for i in indices])
