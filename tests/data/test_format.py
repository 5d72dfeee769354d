"""Writing shards (round trip, key rules, atomicity) and expanding shard patterns."""

import os

os.environ.setdefault("RVQ_COMPILE", "never")

import json

import pytest
import webdataset as wds

from rvq_cli.data import DataError, expand_pattern, shard_pattern, write_shards


def read_all(paths):
    return list(wds.tarfile_samples([{"url": str(p)} for p in paths]))


def test_round_trip_keys_labels_and_bytes(tmp_path, gen):
    src = gen.samples(7)
    paths = write_shards(src, tmp_path / "out", max_count=3)
    assert [p.name for p in paths] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    got = read_all(paths)
    assert [s["__key__"] for s in got] == [s["__key__"] for s in src]
    for a, b in zip(src, got):
        assert b["png"] == a["png"]
        assert int(b["cls"]) == a["cls"]
        assert json.loads(b["json"]) == a["json"]
    assert expand_pattern(shard_pattern(tmp_path / "out", "shard", 3)) == [str(p) for p in paths]


def test_same_samples_give_same_bytes(tmp_path, gen):
    a = write_shards(gen.samples(4), tmp_path / "a", prefix="x")
    b = write_shards(gen.samples(4), tmp_path / "b", prefix="x")
    assert a[0].read_bytes() == b[0].read_bytes()


@pytest.mark.parametrize("key", ["a.b", "", None])
def test_bad_keys_are_refused(tmp_path, key):
    with pytest.raises(ValueError, match="key"):
        write_shards([{"__key__": key, "png": b"x"}], tmp_path / "out")
    assert not list((tmp_path / "out").glob("*.tar"))


def test_duplicate_keys_and_bad_fields_are_refused(tmp_path):
    with pytest.raises(ValueError, match="duplicate"):
        write_shards([{"__key__": "a", "png": b"1"}, {"__key__": "a", "png": b"2"}], tmp_path / "o")
    with pytest.raises(ValueError, match="bytes"):
        write_shards([{"__key__": "a", "png": "not bytes"}], tmp_path / "o")
    with pytest.raises(ValueError, match="no samples"):
        write_shards([], tmp_path / "o")


def test_failed_run_leaves_previous_complete_set_intact(tmp_path, gen):
    out = tmp_path / "out"
    old = write_shards(gen.samples(6), out, max_count=2)
    before = {p.name: p.read_bytes() for p in old}

    def crashing():
        yield from gen.samples(5, start=100)  # enough for two full new shards first
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        write_shards(crashing(), out, max_count=2)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temp folder left either


def test_failed_first_run_leaves_no_final_named_shard(tmp_path, gen):
    def crashing():
        yield from gen.samples(3)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_shards(crashing(), tmp_path / "out", max_count=1)
    assert list((tmp_path / "out").iterdir()) == []


def test_complete_rerun_replaces_and_drops_stale_shards(tmp_path, gen):
    out = tmp_path / "out"
    write_shards(gen.samples(6), out, max_count=2)
    (out / "notes.txt").write_text("kept")
    new = write_shards(gen.samples(3, start=50), out, max_count=2)
    names = sorted(p.name for p in out.glob("*.tar"))
    assert names == [p.name for p in new] == ["shard-000000.tar", "shard-000001.tar"]
    assert [s["__key__"] for s in read_all(new)] == ["img0050", "img0051", "img0052"]
    assert (out / "notes.txt").read_text() == "kept"


def test_expand_pattern_braces_and_globs(tmp_path, gen):
    write_shards(gen.samples(4), tmp_path, max_count=1)
    names = [str(tmp_path / f"shard-{i:06d}.tar") for i in range(4)]
    assert expand_pattern(str(tmp_path / "shard-{000000..000003}.tar")) == names
    assert expand_pattern(str(tmp_path / "*.tar")) == names
    assert expand_pattern(tmp_path / "shard-000002.tar") == names[2:3]


def test_missing_shard_raises_data_error_naming_it(tmp_path, gen):
    write_shards(gen.samples(2), tmp_path, max_count=1)
    with pytest.raises(DataError) as err:
        expand_pattern(str(tmp_path / "shard-{000000..000003}.tar"))
    msg = str(err.value)
    assert "shard-000002.tar" in msg and "shard-000003.tar" in msg and "shard-000000.tar" not in msg
    assert "rvq data shards" in msg and "\n" not in msg
    with pytest.raises(DataError, match="nothing-here"):
        expand_pattern(str(tmp_path / "nothing-here-*.tar"))
    with pytest.raises(DataError, match="folder"):
        expand_pattern(str(tmp_path))


def test_count_samples_reads_headers_only(tmp_path, gen):
    from rvq_cli.data.format import count_samples

    paths = write_shards(gen.samples(7), tmp_path / "out", max_count=3)  # png + cls + json per sample
    assert count_samples([str(p) for p in paths]) == 7
    assert count_samples([]) == 0
    assert count_samples(["pipe:cat x.tar"]) is None  # a stream cannot be listed ahead
    (tmp_path / "bad.tar").write_bytes(b"not a tar")
    assert count_samples([str(tmp_path / "bad.tar")]) is None
