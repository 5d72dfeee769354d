"""Video data: clip batches (resize_center_crop, video_batches), the demo video set."""

import os

os.environ.setdefault("RVQ_COMPILE", "never")

import itertools

import numpy as np
import pytest
import torch
from synthetic_video import T, frames

from rvq_cli.data import DataError, write_shards
from rvq_cli.data.mp4 import encode_mp4
from rvq_cli.data.video import resize_center_crop, video_batches
from rvq_cli.data.video_demo import demo_video_shards

# --------------------------------------------------------------------------------------------
# resize_center_crop
# --------------------------------------------------------------------------------------------


def test_resize_center_crop_shapes_and_values():
    clip = np.zeros((3, 20, 40, 3), np.uint8)  # (T, H, W, 3): landscape, left half dark, right half bright
    clip[:, :, 20:] = 200
    out = resize_center_crop(clip, 10)  # short side 20 -> 10: 10×20, central 10 columns are 5..14
    assert out.shape == (3, 10, 10, 3) and out.dtype == np.uint8
    assert np.array_equal(out[0], out[2])  # the same geometry for every frame
    assert (out[:, :, :3] == 0).all() and (out[:, :, -3:] == 200).all()
    tall = resize_center_crop(np.full((2, 30, 16, 3), 77, np.uint8), 32)  # upscaled: short side 16 -> 32
    assert tall.shape == (2, 32, 32, 3) and (tall == 77).all()


# --------------------------------------------------------------------------------------------
# video_batches
# --------------------------------------------------------------------------------------------


def video_samples(n: int, start: int = 0) -> list[dict]:
    return [{"__key__": f"vid{i:04d}", "mp4": encode_mp4(frames(T, seed=i), fps=8), "json": {"fps": 8, "frames": T}}
            for i in range(start, start + n)]


@pytest.fixture(scope="module")
def clips():
    return video_samples(14)


@pytest.fixture
def shards(tmp_path, clips):
    """shards(n, max_count, extra) -> brace pattern of shards holding clips[:n] (+ extra samples)."""

    def make(n: int, max_count: int, extra: list[dict] = ()) -> str:
        paths = write_shards(clips[:n] + list(extra), tmp_path / "v", max_count=max_count)
        return str(tmp_path / "v" / f"shard-{{000000..{len(paths) - 1:06d}}}.tar")

    return make


def train(pattern, n=5, **kw):
    args = {"frames": 4, "stride": 2, "image_size": 16, "batch_size": 3, "train": True, "seed": 0,
            "shuffle_buffer": 6} | kw
    return list(itertools.islice(video_batches(pattern, **args), n))


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x["video"], y["video"]) and x["key"] == y["key"] for x, y in zip(a, b))


def test_batches_shape_dtype_range(shards):
    batches = train(shards(8, 3), n=4)  # 12 clips from 8 videos: an infinite stream
    for b in batches:
        assert b["video"].shape == (3, 3, 4, 16, 16) and b["video"].dtype == torch.float32
        assert b["video"].min() >= -1 and b["video"].max() <= 1
        assert len(b["key"]) == 3 and b["skipped"] == 0
    assert batches[0]["video"].max() == 1  # the white square survives as 255 -> 1


def test_corrupt_and_short_samples_are_skipped_and_counted(shards, clips):
    bad = [{"__key__": "corrupt", "mp4": clips[0]["mp4"][:200] + b"\0" * 300},
           {"__key__": "short", "mp4": encode_mp4(frames(3), fps=8)},
           {"__key__": "novideo", "json": {"fps": 8}}]
    val = list(video_batches(shards(5, 100, extra=bad), frames=4, stride=2, image_size=16, batch_size=2,
                             train=False, seed=0))
    keys = [k for b in val for k in b["key"]]
    assert keys == [f"vid{i:04d}" for i in range(5)]
    assert sum(b["skipped"] for b in val) == 3


def test_train_is_deterministic_seeded_and_resumable(shards):
    p = shards(10, 3)
    full = train(p, n=6)
    assert same(full, train(p, n=6))
    assert not same(full, train(p, n=6, seed=1))
    for k in (1, 4):
        assert same(train(p, n=6 - k, start_batch=k), full[k:])


def test_train_resume_with_two_workers(shards):
    p = shards(10, 3)
    full = train(p, n=5, num_workers=2)
    assert same(train(p, n=2, num_workers=2, start_batch=3), full[3:])


def test_validation_covers_every_sample_once_across_ranks(shards):
    p = shards(14, 3)  # 5 shards
    keys = []
    for rank in (0, 1):
        for b in video_batches(p, frames=4, stride=3, image_size=16, batch_size=2, train=False, seed=0,
                               rank=rank, world_size=2):
            assert b["video"].shape[1:] == (3, 4, 16, 16)
            keys += b["key"]
    assert sorted(keys) == [f"vid{i:04d}" for i in range(14)]  # every sample, no duplicates


def test_bad_arguments_and_missing_shards(tmp_path):
    with pytest.raises(ValueError, match="frames"):
        video_batches("x.tar", frames=0, image_size=8, batch_size=1, train=True, seed=0)
    with pytest.raises(DataError, match="does not exist"):
        video_batches(str(tmp_path / "none.tar"), frames=2, image_size=8, batch_size=1, train=True, seed=0)


# --------------------------------------------------------------------------------------------
# demo video set
# --------------------------------------------------------------------------------------------


def test_tiny_demo_builds_deterministically_and_streams(tmp_path):
    kw = {"train_clips": 6, "val_clips": 3, "frames": 8, "size": 32}
    a = demo_video_shards(tmp_path / "a", **kw)
    b = demo_video_shards(tmp_path / "b", **kw)
    assert (a.train_count, a.val_count) == (6, 3)
    tars = sorted(p.relative_to(a.root) for p in a.root.rglob("*.tar"))
    assert tars and tars == sorted(p.relative_to(b.root) for p in b.root.rglob("*.tar"))
    assert all((a.root / t).read_bytes() == (b.root / t).read_bytes() for t in tars)  # same bytes twice
    assert [p.name for p in (tmp_path / "a").iterdir()] == [a.root.name]  # no temporary folder left
    assert demo_video_shards(tmp_path / "a", **kw) == a  # reused

    batch = train(a.train, n=1, frames=8, stride=1, image_size=32, batch_size=4)[0]
    assert batch["video"].shape == (4, 3, 8, 32, 32) and batch["skipped"] == 0
    v = batch["video"]
    assert (v[:, :, 1:] - v[:, :, :-1]).abs().mean() > 0.01  # things move
    val = list(video_batches(a.val, frames=8, image_size=32, batch_size=2, train=False, seed=0))
    assert sorted(k for b in val for k in b["key"]) == [f"clip_{i:06d}" for i in range(3)]
