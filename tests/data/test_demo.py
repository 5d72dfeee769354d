"""The demo dataset: built once from scikit-image's photographs, reused, split by photo."""

import os

os.environ.setdefault("RVQ_COMPILE", "never")

import io
import json
import shutil
import time

import pytest
import webdataset as wds
from PIL import Image

from rvq_cli.data import demo_shards, expand_pattern, image_batches


def photo(key: str) -> str:
    return key.rsplit("_s", 1)[0]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One demo build shared by the tests of this module: (DemoShards, cache dir, seconds)."""
    cache = tmp_path_factory.mktemp("cache")
    t = time.perf_counter()
    d = demo_shards(cache_dir=cache)
    return d, cache, time.perf_counter() - t


def test_demo_builds_once_and_reuses(built):
    d, tmp_path, build = built
    assert d.root == tmp_path / "demo-v1"
    assert json.loads((d.root / "complete.json").read_text())["train"]["samples"] == d.train_count
    assert [p.name for p in tmp_path.iterdir()] == ["demo-v1"]  # no temporary folder left

    mtimes = {p: p.stat().st_mtime_ns for p in d.root.rglob("*.tar")}
    t = time.perf_counter()
    again = demo_shards(cache_dir=tmp_path)
    assert again == d and time.perf_counter() - t < 0.1 * build + 0.05
    assert {p: p.stat().st_mtime_ns for p in d.root.rglob("*.tar")} == mtimes

    assert 2000 <= d.train_count <= 6000 and 200 <= d.val_count <= 1000
    train = list(wds.tarfile_samples([{"url": u} for u in expand_pattern(d.train)]))
    val = list(wds.tarfile_samples([{"url": u} for u in expand_pattern(d.val)]))
    assert (len(train), len(val)) == (d.train_count, d.val_count)
    assert len({s["__key__"] for s in train + val}) == len(train) + len(val)
    assert not {photo(s["__key__"]) for s in train} & {photo(s["__key__"]) for s in val}
    for s in train[:50] + val[:50]:
        im = Image.open(io.BytesIO(s["png"]))
        assert (im.size, im.mode) == ((64, 64), "RGB")

    b = next(iter(image_batches(d.val, image_size=64, batch_size=8, train=False, seed=0)))
    assert b["image"].shape == (8, 3, 64, 64) and b["skipped"] == 0


def test_incomplete_cache_is_rebuilt(tmp_path):
    half = tmp_path / "demo-v1" / "train"
    half.mkdir(parents=True)
    (half / "demo-train-000000.tar").write_bytes(b"half written")  # no complete.json
    d = demo_shards(cache_dir=tmp_path)
    assert (d.root / "complete.json").exists()
    assert (half / "demo-train-000000.tar").stat().st_size > 1000


def test_rvq_cache_environment_variable(built, tmp_path, monkeypatch):
    shutil.copytree(built[0].root, tmp_path / "env" / "demo-v1")  # a complete cache, copied
    monkeypatch.setenv("RVQ_CACHE", str(tmp_path / "env"))
    assert demo_shards().root == tmp_path / "env" / "demo-v1"
