"""mp4 in memory: round trips through PyAV and decord, clip starts and strides, and the PyAV
fallback for frame sizes decord mis-sizes."""

import io
import random

import numpy as np
import pytest
from synthetic_video import H, T, W, frames, mae

from rvq_cli.data.mp4 import clip_span, decode_clip, encode_mp4


def test_mp4_round_trip_is_close_and_in_order():
    src = frames()
    clip = decode_clip(encode_mp4(src, fps=8), frames=T, stride=1, start=0)
    assert clip.shape == (T, H, W, 3) and clip.dtype == np.uint8
    assert mae(clip, src) < 3
    # each decoded frame is nearest to its own source frame: order exactly right
    assert [int(np.argmin([mae(c, s) for s in src])) for c in clip] == list(range(T))


@pytest.mark.parametrize("stride, start", [(2, 1), (3, 0), (1, 5)])
def test_stride_and_start_are_honoured(stride, start):
    src, n = frames(), 4
    clip = decode_clip(encode_mp4(src, fps=8), frames=n, stride=stride, start=start)
    want = src[start : start + clip_span(n, stride) : stride]
    assert clip.shape == (n, H, W, 3) and mae(clip, want) < 3


def test_default_start_is_centred_and_rng_start_is_random_in_range():
    src, data = frames(), encode_mp4(frames(), fps=8)
    span = clip_span(4, 2)  # 7 of 12 frames: starts 0..5, centre (12 - 7) // 2 = 2
    assert mae(decode_clip(data, frames=4, stride=2), src[2:9:2]) < 3
    rng = random.Random(0)
    starts = set()
    for _ in range(8):
        clip = decode_clip(data, frames=4, stride=2, rng=rng)
        starts.add(int(np.argmin([mae(clip[0], s) for s in src])))
    assert starts <= set(range(T - span + 1)) and len(starts) > 1


@pytest.mark.parametrize("name", ["decord", "pyav"])
def test_too_short_or_corrupt_video_raises(decoder, name):
    decoder(name)
    data = encode_mp4(frames(6), fps=8)
    with pytest.raises(ValueError, match="6 frames"):
        decode_clip(data, frames=4, stride=2)  # needs 7
    with pytest.raises(ValueError, match="outside"):
        decode_clip(data, frames=4, stride=1, start=3)
    with pytest.raises(RuntimeError):  # the decoder cannot open it
        decode_clip(data[: len(data) // 3] + b"\0" * 100, frames=2, stride=1)
    with pytest.raises(ValueError, match="even"):
        encode_mp4(frames(2, h=23), fps=8)


def test_sizes_decord_mis_sizes_fall_back_to_pyav():
    """decord 0.6.0 fails on some small frames (24×24 here); the clip still decodes, via PyAV."""
    import decord

    src = frames(8, h=24, w=24)
    data = encode_mp4(src, fps=8)
    with pytest.raises(decord.DECORDError, match="must exactly match"):
        decord.VideoReader(io.BytesIO(data)).get_batch([0, 1])
    clip = decode_clip(data, frames=4, stride=2, start=1)
    assert clip.shape == (4, 24, 24, 3)
    assert mae(clip, src[1:8:2]) < 8  # the right frames, in order (lossy H.264)


@pytest.fixture
def decoder(monkeypatch):
    """Choose the decoder by hand for one test (video_decoder caches its choice per process)."""
    from rvq_cli.data import mp4

    def choose(name):
        monkeypatch.setenv("RVQ_VIDEO_DECODER", name)
        mp4.video_decoder.cache_clear()
        return mp4.video_decoder()

    yield choose
    monkeypatch.delenv("RVQ_VIDEO_DECODER", raising=False)
    mp4.video_decoder.cache_clear()


def test_pyav_decodes_the_same_frames_as_decord(decoder):
    from rvq_cli.data.mp4 import video_length

    data = encode_mp4(frames(), fps=8)
    assert decoder("decord") == "decord"
    want = [decode_clip(data, frames=4, stride=2, start=s) for s in (0, 3)]
    n = video_length(data)
    rng_state = random.Random(7)
    want_random = decode_clip(data, frames=3, stride=1, rng=rng_state)
    assert decoder("pyav") == "pyav"
    for s, w in zip((0, 3), want):
        np.testing.assert_array_equal(decode_clip(data, frames=4, stride=2, start=s), w)
    assert video_length(data) == n == T
    np.testing.assert_array_equal(decode_clip(data, frames=3, stride=1, rng=random.Random(7)), want_random)
    with pytest.raises(ValueError, match="needs"):
        decode_clip(data, frames=T + 1)


def test_a_bad_decoder_choice_is_refused(decoder):
    from rvq_cli.data import DataError

    with pytest.raises(DataError, match="RVQ_VIDEO_DECODER='ffmpeg': choose one of decord, pyav"):
        decoder("ffmpeg")
