"""prepare_dataset / `rvq data prepare`: each layout on a tiny tree, determinism, resuming,
corrupt files, errors through the real CLI, and FacesHQ as one brace pattern."""

import os

os.environ.setdefault("RVQ_COMPILE", "never")

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from rvq_cli.config import load_recipe
from rvq_cli.data import DataError, DatasetOptions, expand_pattern, image_batches, prepare_dataset, writer
from rvq_cli.data.format import shuffled_order
from tiny import TINY

RVQ = shutil.which("rvq") or os.path.join(os.path.dirname(sys.executable), "rvq")
SYNSETS = ["n02000000", "n01000000", "n03000000"]  # sorted: n01 -> 0, n02 -> 1, n03 -> 2
VAL = ["n02000000", "n01000000", "n03000000", "n01000000", "n03000000", "n02000000"]  # image j+1's synset


def img(seed: int, fmt: str = "JPEG", h: int = 20, w: int = 24) -> bytes:
    a = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format=fmt)
    return buf.getvalue()


def put(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def read(pattern: str) -> list[dict]:
    return list(wds.tarfile_samples([{"url": u} for u in expand_pattern(pattern)]))


def opts(**kw) -> DatasetOptions:
    return DatasetOptions(**{"workers": 1, "quiet": True, **kw})


def imagenet(root: Path, val_folders: bool) -> Path:
    """3 synsets × 3 training JPEGs; 6 validation JPEGs in synset folders or flat (+ Kaggle csv)."""
    for s, syn in enumerate(SYNSETS):
        for k in range(3):
            put(root / "train" / syn / f"{syn}_{k}.JPEG", img(10 * s + k))
    rows = ["ImageId,PredictionString"]
    for j, syn in enumerate(VAL, 1):
        name = f"ILSVRC2012_val_{j:08d}"
        put(root / "val" / (syn if val_folders else "") / f"{name}.JPEG", img(100 + j))
        rows.append(f"{name},{syn} 10 20 30 40 {syn} 1 2 3 4")
    (root / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    return root


def ffhq(root: Path, nested: bool = True) -> Path:
    """FFHQ-style numbered PNGs: 00000/00000.png ... (or flat), 3 below 01000 and 2 above."""
    for i in (0, 1, 2, 1000, 1001):
        put(root / (f"{i // 1000 * 1000:05d}" if nested else "") / f"{i:05d}.png", img(200 + i, "PNG"))
    (root / "LICENSE.txt").write_text("not an image")
    return root


def celebahq(root: Path, n: int = 12) -> Path:
    """CelebAMask-HQ-style names: 0.jpg ... 11.jpg (sorted by name, 10 comes before 2)."""
    for i in range(n):
        put(root / f"{i}.jpg", img(300 + i))
    return root


def check_keys(samples: list[dict]) -> None:
    keys = [s["__key__"] for s in samples]
    assert len(set(keys)) == len(keys) and not any("." in k for k in keys)


@pytest.mark.parametrize("val_folders", [True, False])
def test_imagenet_labels_follow_sorted_synsets(tmp_path, val_folders):
    src = imagenet(tmp_path / "in", val_folders)
    labels = None if val_folders else src / "LOC_val_solution.csv"
    rep = prepare_dataset("imagenet", src, tmp_path / "out", opts(val_labels=labels, per_shard=4))
    classes = {"n01000000": 0, "n02000000": 1, "n03000000": 2}
    assert rep.classes == classes and json.loads((tmp_path / "out" / "classes.json").read_text()) == classes
    assert {k: (s.count, len(s.shards)) for k, s in rep.splits.items()} == {"train": (9, 3), "val": (6, 2)}
    assert rep.splits["train"].pattern == str(tmp_path / "out" / "train-{000000..000002}.tar")
    train, val = read(rep.splits["train"].pattern), read(rep.splits["val"].pattern)
    check_keys(train + val)
    assert sorted(int(s["cls"]) for s in train) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    paths = [json.loads(s["json"])["path"] for s in train]
    assert paths == shuffled_order(sorted(paths)) != sorted(paths)  # training shards: classes mixed, fixed order
    assert all(int(s["cls"]) == classes[json.loads(s["json"])["synset"]] for s in train)
    by_name = {Path(json.loads(s["json"])["path"]).stem: (int(s["cls"]), json.loads(s["json"])["synset"]) for s in val}
    assert by_name == {f"ILSVRC2012_val_{j:08d}": (classes[syn], syn) for j, syn in enumerate(VAL, 1)}
    first = train[paths.index("train/n01000000/n01000000_0.JPEG")]
    assert json.loads(first["json"]) == {"path": "train/n01000000/n01000000_0.JPEG", "synset": "n01000000"}
    assert first["jpg"] == (src / "train/n01000000/n01000000_0.JPEG").read_bytes()  # original bytes by default


@pytest.mark.parametrize("synsets", ["meta.mat", "synsets.txt"])
def test_imagenet_devkit_ground_truth(tmp_path, synsets):
    src = imagenet(tmp_path / "in", val_folders=False)
    by_id = ["n03000000", "n01000000", "n02000000"]  # ILSVRC2012_ID 1, 2, 3: not the sorted order
    (src / "gt.txt").write_text("".join(f"{by_id.index(syn) + 1}\n" for syn in VAL))
    if synsets == "meta.mat":
        from scipy.io import savemat

        table = np.zeros((len(by_id), 1), dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O")])
        for i, syn in enumerate(by_id):
            table[i, 0] = (np.array([[i + 1]], dtype=np.uint16), np.array([syn]), np.array(["a thing"]))
        savemat(src / synsets, {"synsets": table})
    else:
        (src / synsets).write_text("".join(f"{syn} a thing\n" for syn in by_id))
    rep = prepare_dataset("imagenet", src, tmp_path / "out", opts(val_labels=src / "gt.txt", synsets=src / synsets))
    got = {json.loads(s["json"])["path"]: int(s["cls"]) for s in read(rep.splits["val"].pattern)}
    assert got == {f"val/ILSVRC2012_val_{j:08d}.JPEG": sorted(SYNSETS).index(syn) for j, syn in enumerate(VAL, 1)}


def test_imagenet_labels_that_do_not_fit_are_refused(tmp_path):
    src = imagenet(tmp_path / "in", val_folders=False)
    with pytest.raises(DataError, match="directly in .*pass val_labels"):
        prepare_dataset("imagenet", src, tmp_path / "out", opts())
    short = src / "short.csv"
    short.write_text("\n".join((src / "LOC_val_solution.csv").read_text().splitlines()[:-2]) + "\n")
    with pytest.raises(DataError, match="no entry for 2 of the 6 validation images"):
        prepare_dataset("imagenet", src, tmp_path / "out", opts(val_labels=short))
    (src / "gt.txt").write_text("1\n2\n3\n1\n2\n3\n")
    with pytest.raises(DataError, match="needs synsets "):
        prepare_dataset("imagenet", src, tmp_path / "out", opts(val_labels=src / "gt.txt"))
    (src / "sorted.txt").write_text("".join(f"n{i:08d} thing\n" for i in range(1000)))
    with pytest.raises(DataError, match="sorted order"):
        prepare_dataset("imagenet", src, tmp_path / "out", opts(val_labels=src / "gt.txt", synsets=src / "sorted.txt"))
    with pytest.raises(DataError, match="^val_from does not apply to the imagenet layout"):
        prepare_dataset("imagenet", src, tmp_path / "out", opts(val_from=3))
    assert not list((tmp_path / "out").glob("*.tar"))


@pytest.mark.parametrize("nested", [True, False])
def test_ffhq_split_by_index(tmp_path, nested):
    src = ffhq(tmp_path / "images1024x1024", nested)
    rep = prepare_dataset("ffhq", src, tmp_path / "out", opts(val_from=1000))
    assert rep.classes is None and json.loads((tmp_path / "out" / "classes.json").read_text()) == {}
    train, val = read(rep.splits["train"].pattern), read(rep.splits["val"].pattern)
    assert [json.loads(s["json"])["index"] for s in train] == shuffled_order([0, 1, 2])
    assert [json.loads(s["json"])["index"] for s in val] == [1000, 1001]
    assert all(s["__key__"].startswith("ffhq_") and "cls" not in s and "png" in s for s in train + val)
    check_keys(train + val)


def test_faces_errors(tmp_path):
    ffhq(tmp_path / "ffhq-dataset" / "images1024x1024")
    ffhq(tmp_path / "ffhq-dataset" / "thumbnails128x128")
    with pytest.raises(DataError, match="twice.*Point SRC at one copy"):
        prepare_dataset("ffhq", tmp_path / "ffhq-dataset", tmp_path / "out", opts())
    with pytest.raises(DataError, match="No training images"):
        prepare_dataset("ffhq", tmp_path / "ffhq-dataset" / "thumbnails128x128", tmp_path / "out", opts(val_from=0))
    put(tmp_path / "faces" / "portrait.png", img(0, "PNG"))
    with pytest.raises(DataError, match="no index in their name"):
        prepare_dataset("celebahq", tmp_path / "faces", tmp_path / "out", opts())


def test_celebahq_last_fraction_or_lists(tmp_path):
    src = celebahq(tmp_path / "CelebA-HQ-img")
    rep = prepare_dataset("celebahq", src, tmp_path / "a", opts())  # default: last 10% by number
    assert [json.loads(s["json"])["index"] for s in read(rep.splits["val"].pattern)] == [11]
    assert rep.splits["train"].count == 11
    rep = prepare_dataset("celebahq", src, tmp_path / "b", opts(val_fraction=0.25))
    assert [json.loads(s["json"])["index"] for s in read(rep.splits["val"].pattern)] == [9, 10, 11]

    (tmp_path / "train.txt").write_text("".join(f"imgHQ{i:05d}.npy\n" for i in range(8)))  # taming's names
    (tmp_path / "val.txt").write_text("imgHQ00008.npy\nimgHQ00009.npy\n")
    lists = {"train_list": tmp_path / "train.txt", "val_list": tmp_path / "val.txt"}
    rep = prepare_dataset("celebahq", src, tmp_path / "c", opts(**lists))
    assert (rep.splits["train"].count, rep.splits["val"].count) == (8, 2)
    assert rep.notes == ["2 images are in neither list and were left out"]
    assert all(s["__key__"].startswith("celebahq_") for s in read(rep.splits["val"].pattern))
    (tmp_path / "val.txt").write_text("imgHQ00099.npy\n")
    with pytest.raises(DataError, match="not in the source folder"):
        prepare_dataset("celebahq", src, tmp_path / "d", opts(**lists))


def test_folder_split_by_path_hash(tmp_path):
    src = tmp_path / "pets"
    for j, c in enumerate(("cats", "dogs")):
        for i in range(8):
            put(src / c / f"{c}{i}.png", img(10 * j + i, "PNG"))
    a = prepare_dataset("folder", src, tmp_path / "a", opts(val_fraction=0.5))
    assert a.classes == {"cats": 0, "dogs": 1}

    def split_of(rep):
        return {json.loads(s["json"])["path"]: (name, int(s["cls"]), json.loads(s["json"])["class"])
                for name, sp in rep.splits.items() for s in read(sp.pattern)}

    before = split_of(a)
    assert len(before) == 16 and 0 < sum(v[0] == "val" for v in before.values()) < 16
    assert all(v[1] == a.classes[v[2]] for v in before.values())
    put(src / "cats" / "new.png", img(99, "PNG"))  # a new file does not move the others
    after = split_of(prepare_dataset("folder", src, tmp_path / "b", opts(val_fraction=0.5)))
    assert {p: v for p, v in after.items() if p in before} == before


def test_same_input_gives_identical_shards(tmp_path):
    src = imagenet(tmp_path / "in", val_folders=True)
    a = prepare_dataset("imagenet", src, tmp_path / "a", opts(per_shard=4))
    b = prepare_dataset("imagenet", src, tmp_path / "b", opts(per_shard=4, workers=2))
    for split in ("train", "val"):
        assert [p.read_bytes() for p in a.splits[split].shards] == [p.read_bytes() for p in b.splits[split].shards]


def test_downscaling_with_size(tmp_path):
    src = tmp_path / "faces"
    put(src / "00000.png", img(0, "PNG", h=20, w=24))
    put(src / "00001.png", img(1, "PNG", h=12, w=10))  # short side already below --size
    rep = prepare_dataset("ffhq", src, tmp_path / "out", opts(size=16))
    big, small = read(rep.splits["train"].pattern)
    assert Image.open(io.BytesIO(big["jpg"])).size == (19, 16)
    assert small["png"] == (src / "00001.png").read_bytes()


def test_resume_rewrites_only_what_is_missing(tmp_path):
    src = ffhq(tmp_path / "ffhq")
    o = opts(per_shard=1, val_from=1000)
    out = tmp_path / "out"
    first = prepare_dataset("ffhq", src, out, o)
    shards = sorted(out.glob("*.tar"))
    assert len(shards) == 5 and first.splits["train"].written_now == 3
    before = {p.name: p.read_bytes() for p in shards}
    for p in shards:
        os.utime(p, ns=(10**9, 10**9))
    (out / "train-000001.tar").unlink()
    (out / ".progress" / "train-000001.json").unlink()
    again = prepare_dataset("ffhq", src, out, o)
    assert (again.splits["train"].written_now, again.splits["val"].written_now) == (1, 0)
    assert {p.name for p in out.glob("*.tar") if p.stat().st_mtime_ns != 10**9} == {"train-000001.tar"}
    assert {p.name: p.read_bytes() for p in out.glob("*.tar")} == before

    with pytest.raises(DataError, match="other settings .*val_from: 1000 before, 1001 now.*pass restart to"):
        prepare_dataset("ffhq", src, out, opts(per_shard=1, val_from=1001))
    rep = prepare_dataset("ffhq", src, out, opts(per_shard=1, val_from=1001, restart=True))
    assert (rep.splits["train"].count, rep.splits["val"].count) == (4, 1)
    assert sorted(p.name for p in out.glob("*.tar")) == [f"train-00000{i}.tar" for i in range(4)] + ["val-000000.tar"]


def test_interrupted_run_leaves_no_partial_shard(tmp_path, monkeypatch):
    src = ffhq(tmp_path / "ffhq")
    real, calls = writer._read, []

    def dies_on_third(job):
        calls.append(job)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(writer, "_read", dies_on_third)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset("ffhq", src, out, opts(per_shard=2, val_from=1000))
    assert sorted(p.name for p in out.iterdir()) == [".progress", "train-000000.tar"]  # no partial, no train-000001
    monkeypatch.setattr(writer, "_read", real)
    rep = prepare_dataset("ffhq", src, out, opts(per_shard=2, val_from=1000))
    assert (rep.splits["train"].written_now, rep.splits["val"].written_now) == (1, 2)
    clean = prepare_dataset("ffhq", src, tmp_path / "clean", opts(per_shard=2, val_from=1000))
    assert ([p.read_bytes() for p in rep.splits["train"].shards]
            == [p.read_bytes() for p in clean.splits["train"].shards])


def rvq(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([RVQ, "data", "prepare", *map(str, args)], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, RVQ_COMPILE="never"))


def test_cli_lists_corrupt_files_and_prints_patterns(tmp_path):
    src = ffhq(tmp_path / "ffhq")
    put(src / "00000" / "00003.png", b"\x89PNG\r\n\x1a\n truncated")
    res = rvq("ffhq", src, tmp_path / "out", "--val-from", "1000", "--workers", "2", "--quiet")
    assert res.returncode == 0, res.stderr + res.stdout
    assert (tmp_path / "out" / "skipped.txt").read_text().startswith("00000/00003.png\t")
    assert "1 file(s) skipped" in res.stdout and "00000/00003.png" in res.stdout
    assert f"data.train={tmp_path / 'out' / 'train-000000.tar'}" in res.stdout
    assert "train: 3 images" in res.stdout and "data.val=" in res.stdout


@pytest.mark.parametrize("case", ["missing source", "unknown layout", "no val folder", "labels miss images"])
def test_cli_errors_are_one_paragraph(tmp_path, case):
    src = imagenet(tmp_path / "in", val_folders=False)
    short = tmp_path / "short.csv"
    short.write_text("\n".join((src / "LOC_val_solution.csv").read_text().splitlines()[:-1]) + "\n")
    if case == "no val folder":
        shutil.rmtree(src / "val")
    args, expect = {
        "missing source": (["ffhq", tmp_path / "nope"], "nope is not a folder. Give the folder you downloaded"),
        "unknown layout": (["coco", src], "Unknown dataset layout 'coco'; choose one of imagenet, ffhq"),
        "no val folder": (["imagenet", src], "val is not a folder. `rvq data prepare imagenet` expects"),
        "labels miss images": (["imagenet", src, "--val-labels", short], "has no entry for 1 of the 6"),
    }[case]
    res = rvq(*args, tmp_path / "out", "--quiet")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.startswith("error: ") and expect in " ".join(res.stderr.split())
    assert not (tmp_path / "out").exists()


def test_faceshq_is_one_brace_pattern(tmp_path):
    f = prepare_dataset("ffhq", ffhq(tmp_path / "ffhq-src"), tmp_path / "ffhq", opts(per_shard=2, val_from=1000))
    c = prepare_dataset("celebahq", celebahq(tmp_path / "celeba-src"), tmp_path / "celebahq", opts(per_shard=8))
    pattern = f"{{{f.splits['train'].pattern},{c.splits['train'].pattern}}}"  # {A/train-{0..1}.tar,B/train-{0..1}.tar}
    assert expand_pattern(pattern) == [str(p) for p in f.splits["train"].shards + c.splits["train"].shards]
    (batch,) = image_batches(pattern, image_size=16, batch_size=64, train=False, seed=0)
    assert batch["image"].shape == (3 + 11, 3, 16, 16)
    assert {k.split("_")[0] for k in batch["key"]} == {"ffhq", "celebahq"}
    stream = iter(image_batches(pattern, image_size=16, batch_size=8, train=True, seed=0, shuffle_buffer=0))
    seen = {k.split("_")[0] for _ in range(4) for k in next(stream)["key"]}
    assert seen == {"ffhq", "celebahq"}

    # a recipe names it the way docs/datasets.md says: quoted in YAML, and in overrides
    recipe = tmp_path / "faceshq.yaml"
    recipe.write_text(TINY.format(train=pattern, val=f.splits["val"].pattern, out=tmp_path / "run"))
    assert load_recipe(recipe).data.train == pattern
    assert load_recipe(recipe, [f'data.train="{pattern}"']).data.train == pattern
