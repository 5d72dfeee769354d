"""image_batches: training and validation streams over real shards, with real worker processes."""

import os

os.environ.setdefault("RVQ_COMPILE", "never")

import itertools

import pytest
import torch

from rvq_cli.data import DataError, image_batches

S = 16  # image_size: the generated images are 20×28, so training crops are random


def take(loader, n):
    return list(itertools.islice(loader, n))


def train(pattern, n=6, **kw):
    args = dict(image_size=S, batch_size=4, train=True, seed=0, shuffle_buffer=8) | kw
    return take(image_batches(pattern, **args), n)


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x["image"], y["image"]) and x["key"] == y["key"] for x, y in zip(a, b))


def test_train_batches_shape_dtype_range(make_shards):
    batches = train(make_shards(10, 4), n=5)  # more batches than samples: an infinite stream
    for b in batches:
        assert b["image"].shape == (4, 3, S, S) and b["image"].dtype == torch.float32
        assert b["image"].min() >= -1 and b["image"].max() <= 1
        assert len(b["key"]) == 4 and b["skipped"] == 0
    assert batches[0]["image"].min() < -0.9 and batches[0]["image"].max() > 0.9  # the full range is used


def test_small_images_are_upscaled_then_cropped(make_shards):
    b = train(make_shards(3, 3), n=1, image_size=32)[0]  # 20×28 source -> short side 32
    assert b["image"].shape == (4, 3, 32, 32)


def test_train_is_deterministic_and_depends_on_seed_and_rank(make_shards):
    p = make_shards(12, 3)
    a = train(p)
    assert same(a, train(p))
    assert not same(a, train(p, seed=1))
    r1 = train(p, rank=1, world_size=2)
    assert not same(a, r1) and same(r1, train(p, rank=1, world_size=2))


def test_no_flip_and_no_shuffle_options(make_shards):
    p = make_shards(12, 12)
    plain = train(p, shuffle_buffer=0, n=3)
    assert [k for b in plain for k in b["key"]] == [f"img{i:04d}" for i in range(12)]  # one shard, read in order
    assert not same(plain, train(p, shuffle_buffer=0, random_flip=False, n=3))  # flips happened


@pytest.mark.parametrize("workers", [0, 2])
def test_start_batch_equals_tail_of_fresh_stream(make_shards, workers):
    p = make_shards(13, 3)
    full = train(p, n=9, num_workers=workers)
    for k in (1, 4, 5):
        assert same(train(p, n=9 - k, num_workers=workers, start_batch=k), full[k:])


def test_two_workers_work_and_are_deterministic(make_shards):
    p = make_shards(12, 3)
    a = train(p, n=8, num_workers=2)
    assert same(a, train(p, n=8, num_workers=2))
    assert all(b["image"].shape == (4, 3, S, S) for b in a)
    assert not same(a[0::2], a[1::2])  # the two workers stream different data


def test_more_ranks_times_workers_than_shards_still_feeds_every_rank(make_shards):
    p = make_shards(5, 5)  # a single shard for 2 ranks × 2 workers
    for rank in (0, 1):
        batches = train(p, n=6, rank=rank, world_size=2, num_workers=2)
        assert len(batches) == 6 and all(len(b["key"]) == 4 for b in batches)


def val_keys(pattern, rank, world, workers=0, batch_size=3):
    batches = list(image_batches(pattern, image_size=S, batch_size=batch_size, train=False, seed=0,
                                 rank=rank, world_size=world, num_workers=workers))
    for b in batches:
        assert b["image"].shape[1:] == (3, S, S) and 1 <= len(b["key"]) <= batch_size
    return [k for b in batches for k in b["key"]]


@pytest.mark.parametrize("workers", [0, 2])
def test_validation_covers_every_sample_once_across_ranks(make_shards, workers):
    p = make_shards(11, 2)  # 6 shards, the last one partial
    r0, r1 = val_keys(p, 0, 2, workers), val_keys(p, 1, 2, workers)
    assert not set(r0) & set(r1)
    assert sorted(r0 + r1) == [f"img{i:04d}" for i in range(11)]
    assert len(r0) + len(r1) == 11
    assert r0 == val_keys(p, 0, 2, workers)  # deterministic order


def test_validation_is_centre_crop_without_randomness(make_shards):
    p = make_shards(4, 4)
    a = list(image_batches(p, image_size=S, batch_size=3, train=False, seed=0))
    b = list(image_batches(p, image_size=S, batch_size=3, train=False, seed=7))
    assert [len(x["key"]) for x in a] == [3, 1]  # last partial batch kept
    assert same(a, b)


def test_validation_with_fewer_shards_than_ranks_leaves_extra_ranks_empty(make_shards):
    p = make_shards(3, 3)  # one shard
    assert len(val_keys(p, 0, 2)) == 3 and val_keys(p, 1, 2) == []


def test_corrupt_sample_is_skipped_and_counted(make_shards):
    bad = [{"__key__": "bad0", "png": b"\x89PNG garbage"}, {"__key__": "bad1", "jpg": b"\xff\xd8 nope"},
           {"__key__": "bad2", "txt": b"no image here"}]
    p = make_shards(6, 9, extra=bad)  # one shard: 6 good then 3 bad
    plain = train(p, n=6, shuffle_buffer=0)
    keys = [k for b in plain for k in b["key"]]
    assert not any(k.startswith("bad") for k in keys)
    assert sum(b["skipped"] for b in plain[:3]) == 3  # one pass over the shard = 3 skipped
    assert plain[1]["skipped"] == 3 and len(keys) == 24  # the stream kept going
    v = list(image_batches(p, image_size=S, batch_size=4, train=False, seed=0))
    assert [len(b["key"]) for b in v] == [4, 2] and sum(b["skipped"] for b in v) == 3


@pytest.mark.parametrize("workers", [0, 1])
def test_nothing_decodable_raises_instead_of_hanging(tmp_path, workers):
    from rvq_cli.data import write_shards

    write_shards([{"__key__": f"b{i}", "png": b"junk"} for i in range(4)], tmp_path)
    with pytest.raises(DataError, match="could not be decoded") as err:
        train(str(tmp_path / "shard-000000.tar"), n=1, num_workers=workers)
    assert "Traceback" not in str(err.value)  # a worker's error reads like the in-process one


def test_grayscale_palette_and_rgba_become_rgb(tmp_path, gen):
    from rvq_cli.data import write_shards

    g = gen.image(1, channels=1)
    rgba = gen.image(2, channels=4)
    pal = gen.encode(gen.image(3), "PNG")  # re-encoded as palette below
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.open(io.BytesIO(pal)).convert("P").save(buf, format="PNG")
    samples = [{"__key__": "g", "png": gen.encode(g)}, {"__key__": "a", "png": gen.encode(rgba)},
               {"__key__": "p", "png": buf.getvalue()}, {"__key__": "j", "jpg": gen.encode(gen.image(4), "JPEG")}]
    write_shards(samples, tmp_path)
    (b,) = image_batches(str(tmp_path / "shard-000000.tar"), image_size=S, batch_size=4, train=False, seed=0)
    assert b["key"] == ["g", "a", "p", "j"] and b["skipped"] == 0
    assert b["image"].shape == (4, 3, S, S)
    gray = b["image"][0]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


def test_bad_arguments(make_shards, tmp_path):
    p = make_shards(2, 2)
    with pytest.raises(ValueError, match="rank"):
        image_batches(p, image_size=S, batch_size=2, train=True, seed=0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        image_batches(p, image_size=S, batch_size=0, train=True, seed=0)
    with pytest.raises(DataError, match="missing-000000.tar"):
        image_batches(str(tmp_path / "missing-000000.tar"), image_size=S, batch_size=2, train=True, seed=0)


@pytest.mark.parametrize("option, value, lowest", [("batch_size", True, 1), ("image_size", True, 1),
                                                   ("num_workers", False, 0), ("start_batch", True, 0)])
def test_booleans_are_not_integer_options_for_images_or_videos(make_shards, option, value, lowest):
    """One validator for both streams: a bool is refused like any other non-integer, in the same words."""
    from rvq_cli.data.video import video_batches

    p = make_shards(2, 2)
    message = f"^{option} must be an integer ≥ {lowest}, got {value}$"
    args = {"image_size": S, "batch_size": 2, "train": True, "seed": 0, option: value}
    with pytest.raises(ValueError, match=message):
        image_batches(p, **args)
    with pytest.raises(ValueError, match=message):
        video_batches(p, frames=2, **args)


def test_truncated_shard_is_survived_and_reported(tmp_path, gen):
    from rvq_cli.data import write_shards

    paths = write_shards(gen.samples(8), tmp_path, max_count=4)
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[: len(data) // 2])  # a half-copied shard
    pattern = str(tmp_path / "shard-{000000..000001}.tar")
    v = list(image_batches(pattern, image_size=S, batch_size=3, train=False, seed=0))
    keys = [k for b in v for k in b["key"]]
    assert keys[:4] == ["img0000", "img0001", "img0002", "img0003"] and len(keys) < 8
    assert sum(b["skipped"] for b in v) >= 1  # the cut-off sample is counted
    assert len(train(pattern, n=8)) == 8  # training keeps streaming


def test_iterating_leaves_torch_global_rng_alone(make_shards):
    p = make_shards(4, 4)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    train(p, n=2)
    list(image_batches(p, image_size=S, batch_size=3, train=False, seed=0))
    assert torch.equal(torch.rand(3), expected)


def test_center_crop_takes_the_centre_of_the_stored_image_in_training_and_validation(make_shards):
    """crop="center" (the official Table 1 pipeline): the central S×S of the 20×28 image as
    stored, no resize, for training (flips aside) and validation alike."""
    import numpy as np

    def image(seed):  # the images make_shards writes (tests/data/conftest.py), 20×28 RGB
        return np.random.default_rng(seed).integers(0, 256, (20, 28, 3), dtype=np.uint8)

    p = make_shards(4, 4)
    want = torch.stack([torch.from_numpy(image(i)[2:18, 6:22].copy()).permute(2, 0, 1).float() / 127.5 - 1
                        for i in range(4)])  # rows (20 − 16)/2 = 2.., columns (28 − 16)/2 = 6..
    val = next(iter(image_batches(p, image_size=S, batch_size=4, train=False, seed=0, crop="center")))
    assert val["key"] == [f"img{i:04d}" for i in range(4)]
    assert torch.equal(val["image"], want)
    resized = next(iter(image_batches(p, image_size=S, batch_size=4, train=False, seed=0)))
    assert not torch.equal(resized["image"], want)  # the default resizes the short side first
    tr = train(p, n=2, crop="center", random_flip=False, shuffle_buffer=0)
    for b in tr:
        idx = [int(k[3:]) for k in b["key"]]
        assert torch.equal(b["image"], want[idx])
    flipped = train(p, n=4, crop="center", shuffle_buffer=0)
    images = [img for b in flipped for img in b["image"]]
    keys = [int(k[3:]) for b in flipped for k in b["key"]]
    assert all(torch.equal(x, want[k]) or torch.equal(x, want[k].flip(-1)) for x, k in zip(images, keys))
    assert any(torch.equal(x, want[k].flip(-1)) for x, k in zip(images, keys))
    with pytest.raises(ValueError, match="crop"):
        image_batches(p, image_size=S, batch_size=4, train=False, seed=0, crop="middle")


@pytest.mark.parametrize("h, w", [(20, 28), (27, 33), (10, 40), (15, 9), (16, 16)])
def test_center_crop_native_is_torchvisions_center_crop(h, w):
    """The official Table 1 code's CenterCrop(256): odd offsets rounded, small sides zero-padded."""
    import numpy as np
    from PIL import Image
    from torchvision.transforms import CenterCrop

    from rvq_cli.data.images import center_crop_native

    a = np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    assert np.array_equal(center_crop_native(Image.fromarray(a), S), np.asarray(CenterCrop(S)(Image.fromarray(a))))
