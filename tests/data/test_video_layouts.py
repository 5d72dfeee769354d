"""rvq data prepare bair / ucf101 from tiny fixture trees the tests build: frame folders and .avi
files with the official split lists, into mp4 shards that the video loader decodes."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from rvq_cli.data import DataError
from rvq_cli.data.layouts import DatasetOptions
from rvq_cli.data.mp4 import decode_clip
from rvq_cli.data.prepare import prepare_dataset
from rvq_cli.data.video import sample_video, video_batches

RVQ = shutil.which("rvq") or os.path.join(os.path.dirname(sys.executable), "rvq")


def frame(t: int, seed: int, size: int = 32) -> np.ndarray:
    a = np.full((size, size, 3), (17 * seed) % 120, np.uint8)
    a[:, :, 1] = 20 * t % 250  # the green level tells the frame
    return a


def write_bair(root, trajectories=(3, 2), frames=12, nested=True):
    """root/{train,test}/traj_0_to_255/<i>/<t>.png, as the common extraction scripts write BAIR."""
    for split, n in zip(("train", "test"), trajectories):
        for i in range(n):
            d = root / split / "traj_0_to_255" / str(i) if nested else root / split / str(i)
            d.mkdir(parents=True)
            for t in range(frames):
                Image.fromarray(frame(t, i)).save(d / f"{t}.png")
    return root


def samples(shard):
    import webdataset as wds

    return list(wds.WebDataset(str(shard), shardshuffle=False))


def test_bair_frame_folders_become_mp4_shards_in_frame_order(tmp_path):
    src = write_bair(tmp_path / "bair")
    # frame 10 sorts after 9 by number, not by name
    rep = prepare_dataset("bair", src, tmp_path / "out", DatasetOptions(per_shard=2, workers=1, quiet=True))
    assert rep.splits["train"].count == 3 and rep.splits["val"].count == 2
    assert len(rep.splits["train"].shards) == 2
    s = samples(rep.splits["train"].shards[0])[0]
    meta = json.loads(s["json"])
    assert meta["frames"] == 12 and meta["fps"] == 10 and meta["path"].startswith("train/")
    clip = decode_clip(sample_video(s), frames=12, stride=1, start=0)
    greens = clip[:, 16, 16, 1].astype(int)
    assert np.all(np.abs(greens - 20 * np.arange(12)) < 10)  # every frame, in order
    # the loader reads them: 4-frame clips at stride 2 of 32x32
    batch = next(iter(video_batches(rep.splits["val"].pattern, frames=4, stride=2, image_size=32, batch_size=2,
                                    train=False, seed=0)))
    assert batch["video"].shape == (2, 3, 4, 32, 32) and batch["skipped"] == 0


def test_bair_resumes_and_lists_broken_trajectories(tmp_path):
    src = write_bair(tmp_path / "bair", trajectories=(4, 1))
    (src / "train" / "traj_0_to_255" / "3" / "5.png").write_bytes(b"not a png")
    opts = DatasetOptions(per_shard=2, workers=1, quiet=True)
    rep = prepare_dataset("bair", src, tmp_path / "out", opts)
    assert rep.splits["train"].count == 3 and [s.path for s in rep.skipped] == ["train/traj_0_to_255/3"]
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("*.tar")}
    again = prepare_dataset("bair", src, tmp_path / "out", opts)
    assert again.splits["train"].written_now == 0  # nothing redone
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("*.tar")} == before


def test_bair_without_its_split_folders_says_what_it_expects(tmp_path):
    (tmp_path / "bair" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="SRC/train/ and SRC/test/"):
        prepare_dataset("bair", tmp_path / "bair", tmp_path / "out", DatasetOptions(workers=1, quiet=True))


def write_avi(path, n=10, size=(48, 64), seed=0):
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=25)
        s.height, s.width = size
        s.pix_fmt = "yuv420p"
        for t in range(n):
            a = np.full((*size, 3), 30 + seed * 40, np.uint8)
            a[:, :, 1] = 20 * t
            for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


@pytest.fixture
def ucf(tmp_path):
    root = tmp_path / "UCF-101"
    videos = {"ApplyEyeMakeup": ["v_ApplyEyeMakeup_g01_c01", "v_ApplyEyeMakeup_g08_c01"],
              "Archery": ["v_Archery_g01_c01", "v_Archery_g08_c02"]}
    for cls, names in videos.items():
        for i, name in enumerate(names):
            write_avi(root / cls / f"{name}.avi", seed=i)
    lists = tmp_path / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "trainlist01.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\n"
                                           "Archery/v_Archery_g08_c02.avi 2\n")
    (lists / "testlist01.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\n"
                                          "Archery/v_Archery_g01_c01.avi\n")
    return root


def test_ucf101_uses_the_official_split_and_class_folders(ucf, tmp_path):
    rep = prepare_dataset("ucf101", ucf, tmp_path / "out", DatasetOptions(size=32, workers=2, quiet=True))
    assert rep.classes == {"ApplyEyeMakeup": 0, "Archery": 1}
    got = {split: {json.loads(s["json"])["path"]: int(s["cls"]) for sh in r.shards for s in samples(sh)}
           for split, r in rep.splits.items()}
    assert got == {"train": {"ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi": 0, "Archery/v_Archery_g08_c02.avi": 1},
                   "val": {"ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi": 0, "Archery/v_Archery_g01_c01.avi": 1}}
    s = samples(rep.splits["val"].shards[0])[0]
    meta = json.loads(s["json"])
    assert meta["fps"] == 25 and meta["frames"] == 10 and (meta["height"], meta["width"]) == (32, 42)
    clip = decode_clip(sample_video(s), frames=10, stride=1, start=0)
    assert clip.shape == (10, 32, 42, 3)
    assert np.all(np.abs(clip[:, 16, 20, 1].astype(int) - 20 * np.arange(10)) < 12)


def test_ucf101_cli_and_missing_lists(ucf, tmp_path):
    shutil.move(str(tmp_path / "ucfTrainTestlist"), str(tmp_path / "lists"))
    res = subprocess.run([RVQ, "data", "prepare", "ucf101", str(ucf), str(tmp_path / "o1"), "--workers", "1"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "--train-list" in res.stderr and "Traceback" not in res.stderr
    res = subprocess.run([RVQ, "data", "prepare", "ucf101", str(ucf), str(tmp_path / "o2"), "--workers", "1",
                          "--train-list", str(tmp_path / "lists" / "trainlist01.txt"),
                          "--val-list", str(tmp_path / "lists" / "testlist01.txt")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "data.train=" in res.stdout and (tmp_path / "o2" / "train-000000.tar").is_file()


def test_ucf101_labels_follow_classind_when_present(tmp_path):
    from rvq_cli.data.video_layouts import plan_ucf101

    src = tmp_path / "UCF-101"
    for c in ("Hammering", "HammerThrow", "JumpRope"):
        (src / c).mkdir(parents=True)
    lists = src / "ucfTrainTestlist"  # inside SRC: found there, and not a class
    lists.mkdir()
    (lists / "trainlist01.txt").write_text("")
    (lists / "testlist01.txt").write_text("")
    _, classes, _, notes = plan_ucf101(src, None, None)
    assert classes == {"HammerThrow": 0, "Hammering": 1, "JumpRope": 2} and "sorted order" in notes[0]
    (lists / "classInd.txt").write_text("1 Hammering\n2 HammerThrow\n3 JumpRope\n")
    _, classes, _, _ = plan_ucf101(src, None, None)
    assert classes == {"Hammering": 0, "HammerThrow": 1, "JumpRope": 2}
    (lists / "classInd.txt").write_text("1 Hammering\n2 Archery\n3 JumpRope\n")
    with pytest.raises(DataError, match="other classes"):
        plan_ucf101(src, None, None)
