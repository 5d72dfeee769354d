"""resolve_data: "demo" -> the demo set's shards (image or video, train or val); patterns and
folders unchanged; the streams resolve "demo" through it."""

import os

os.environ.setdefault("RVQ_COMPILE", "never")

from pathlib import Path

import pytest

from rvq_cli import config
from rvq_cli.data import DemoShards, image_batches, resolve_data, sources


@pytest.fixture
def fake_demos(monkeypatch, tmp_path):
    """The image and video demo sets replaced by named stand-ins (no build)."""
    made = {}
    for name in ("demo_shards", "demo_video_shards"):
        d = DemoShards(train=f"{name}-train", val=f"{name}-val", root=tmp_path, train_count=1, val_count=1)
        monkeypatch.setattr(sources, name, lambda d=d, name=name: made.setdefault(name, d))
    return made


def test_demo_name_is_the_recipes():
    assert sources.DEMO == config.DEMO


def test_patterns_and_folders_pass_unchanged(fake_demos, tmp_path):
    assert resolve_data("data/train-{000000..000009}.tar") == "data/train-{000000..000009}.tar"
    assert resolve_data(tmp_path, video=True, split="val") == str(tmp_path)
    assert not fake_demos  # no demo set built


@pytest.mark.parametrize("video", [False, True])
@pytest.mark.parametrize("split", ["train", "val"])
def test_demo_gives_the_split_of_the_right_set(fake_demos, video, split):
    name = "demo_video_shards" if video else "demo_shards"
    assert resolve_data("demo", video=video, split=split) == f"{name}-{split}"
    assert list(fake_demos) == [name]


def test_unknown_split_is_refused():
    with pytest.raises(ValueError, match="split must be 'train' or 'val', got 'test'"):
        resolve_data("demo", split="test")


def test_image_batches_resolve_demo(monkeypatch, make_shards, tmp_path):
    val = make_shards(3, 2)
    d = DemoShards(train="unused", val=val, root=Path(tmp_path), train_count=0, val_count=3)
    monkeypatch.setattr(sources, "demo_shards", lambda: d)
    keys = [k for b in image_batches("demo", image_size=8, batch_size=2, train=False, seed=0) for k in b["key"]]
    assert sorted(keys) == ["img0000", "img0001", "img0002"]
