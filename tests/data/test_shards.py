"""folder_to_shards: class folders, flat folders, corrupt files, formats kept or converted."""

import os

os.environ.setdefault("RVQ_COMPILE", "never")

import json

import pytest
import webdataset as wds

from rvq_cli.data import DataError, expand_pattern, folder_to_shards, image_batches
from rvq_cli.data.format import shuffled_order


def read(pattern):
    return list(wds.tarfile_samples([{"url": u} for u in expand_pattern(pattern)]))


@pytest.fixture
def class_folder(tmp_path, gen):
    src = tmp_path / "src"
    for name in ("dogs", "cats"):
        (src / name / "sub").mkdir(parents=True)
    (src / "cats" / "a.1.jpg").write_bytes(gen.encode(gen.image(1), "JPEG"))
    (src / "cats" / "b.png").write_bytes(gen.encode(gen.image(2)))
    (src / "dogs" / "c.webp").write_bytes(gen.encode(gen.image(3), "WEBP"))
    (src / "dogs" / "sub" / "d.bmp").write_bytes(gen.encode(gen.image(4), "BMP"))
    (src / "dogs" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    (src / "dogs" / "notes.txt").write_text("not an image, ignored")
    return src


@pytest.mark.parametrize("workers", [1, 2])
def test_class_folders(class_folder, tmp_path, workers):
    out = tmp_path / "out"
    rep = folder_to_shards(class_folder, out, max_count=2, workers=workers)
    assert rep.classes == {"cats": 0, "dogs": 1}
    assert json.loads((out / "classes.json").read_text()) == rep.classes
    assert rep.count == 4 and rep.converted == 2 and len(rep.shards) == 2
    assert [s.path for s in rep.skipped] == ["dogs/broken.jpg"]
    assert (out / "skipped.txt").read_text().startswith("dogs/broken.jpg\t")

    samples = sorted(read(rep.pattern), key=lambda s: s["__key__"])  # written in a fixed shuffled order
    assert [s["__key__"] for s in samples] == ["cats_a_1_jpg", "cats_b_png", "dogs_c_webp", "dogs_sub_d_bmp"]
    assert [int(s["cls"]) for s in samples] == [0, 0, 1, 1]
    assert [json.loads(s["json"]) for s in samples][3] == {"path": "dogs/sub/d.bmp", "class": "dogs"}
    assert samples[0]["jpg"] == (class_folder / "cats" / "a.1.jpg").read_bytes()  # original bytes
    assert samples[1]["png"] == (class_folder / "cats" / "b.png").read_bytes()
    assert "png" in samples[2] and "png" in samples[3]  # webp, bmp -> png

    (b,) = image_batches(rep.pattern, image_size=16, batch_size=4, train=False, seed=0)
    assert b["image"].shape == (4, 3, 16, 16) and b["skipped"] == 0


def test_same_folder_gives_same_shards(class_folder, tmp_path):
    a = folder_to_shards(class_folder, tmp_path / "a", workers=1)
    b = folder_to_shards(class_folder, tmp_path / "b", workers=2)
    assert [p.read_bytes() for p in a.shards] == [p.read_bytes() for p in b.shards]


def test_flat_folder_has_no_labels(tmp_path, gen):
    src = tmp_path / "flat"
    src.mkdir()
    for i in range(3):
        (src / f"x{i}.png").write_bytes(gen.encode(gen.image(i)))
    (src / ".hidden.png").write_bytes(gen.encode(gen.image(9)))
    rep = folder_to_shards(src, tmp_path / "out", workers=1)
    assert rep.classes is None and rep.count == 3 and rep.skipped == []
    assert json.loads((tmp_path / "out" / "classes.json").read_text()) == {}
    samples = read(rep.pattern)
    assert [s["__key__"] for s in samples] == shuffled_order(["x0_png", "x1_png", "x2_png"])
    assert all("cls" not in s for s in samples)
    assert json.loads(samples[0]["json"]) == {"path": "x0.png"}


def test_key_clashes_get_suffixes(tmp_path, gen):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a" / "b.png").write_bytes(gen.encode(gen.image(0)))
    (src / "a_b.png").write_bytes(gen.encode(gen.image(1)))
    rep = folder_to_shards(src, tmp_path / "out", workers=1)
    assert rep.classes is None  # images at the top level: not a class layout
    assert sorted(s["__key__"] for s in read(rep.pattern)) == ["a_b_png", "a_b_png_2"]


def test_unusable_folders_raise_data_error(tmp_path):
    with pytest.raises(DataError, match="not a folder"):
        folder_to_shards(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="No image files"):
        folder_to_shards(tmp_path / "empty", tmp_path / "out")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="could be decoded"):
        folder_to_shards(tmp_path / "bad", tmp_path / "out", workers=1)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.tar"))
