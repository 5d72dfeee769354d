"""FID reference statistics: rvq data stats against torch-fidelity's statistics of features
computed here, rvq eval --reference-stats giving the r-FID of the originals themselves, refusal
of statistics made another way, and rvq compare making them once for all its runs."""

import json
import os
import subprocess

import numpy as np
import pytest
import torch
from test_eval import val_images

from rvq_cli.evaluation import EvalError, evaluate, fidelity
from rvq_cli.evaluation.reference import StatsError, compute_stats, read_stats
from tiny import RVQ

pytestmark = pytest.mark.usefixtures("no_cached_weights")


@pytest.fixture
def stats_file(eval_run, tmp_path, inception_file):
    compute_stats(str(eval_run / "val" / "*.tar"), tmp_path / "ref.npz", image_size=16, batch_size=3,
                  num_workers=0, inception_weights=inception_file, quiet=True)
    return tmp_path / "ref.npz"


def test_stats_are_torch_fidelitys_of_the_originals(eval_run, stats_file, inception_file):
    from torch_fidelity import metric_fid

    stats = read_stats(stats_file)
    _, x = val_images(eval_run)
    from rvq_cli.data.images import to_uint8

    pool, logits = fidelity.inception_features(fidelity.load_inception(inception_file), to_uint8(x))
    want = metric_fid.fid_features_to_statistics(pool)
    assert stats.n == 10 and stats.mu.shape == (2048,) and stats.sigma.shape == (2048, 2048)
    np.testing.assert_allclose(stats.mu, want["mu"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.sigma, want["sigma"], rtol=1e-4, atol=1e-6)
    assert stats.is_originals == pytest.approx(fidelity.inception_score(logits)[0], rel=1e-5)
    s = stats.settings
    assert (s["image_size"], s["feature"], s["crop"], s["images_counted"]) == (16, "2048", "center", 10)
    assert len(s["inception_sha256"]) == 64 and s["data"].endswith("*.tar")
    with np.load(stats_file, allow_pickle=False) as f:  # no pickles inside
        assert set(f.files) == {"mu", "sigma", "n", "is_originals", "settings"}


def test_eval_with_the_originals_stats_gives_the_same_rfid(eval_run, tmp_path, stats_file, inception_file):
    plain = evaluate(eval_run / "run", batch_size=4, inception_weights=inception_file, out=tmp_path / "a.json",
                     quiet=True, lpips=False)
    ref = evaluate(eval_run / "run", batch_size=4, inception_weights=inception_file, out=tmp_path / "b.json",
                   quiet=True, lpips=False, reference_stats=stats_file)
    assert ref.metrics["rfid"] == pytest.approx(plain.metrics["rfid"], rel=1e-3)
    assert ref.metrics["is_originals"] == pytest.approx(plain.metrics["is_originals"], rel=1e-5)
    assert ref.metrics["ris"] == pytest.approx(plain.metrics["ris"], rel=1e-6)
    recorded = json.loads((tmp_path / "b.json").read_text())["settings"]["reference_stats"]
    assert recorded == {"path": str(stats_file), "images": 10, "data": str(eval_run / "val" / "*.tar")}
    assert json.loads((tmp_path / "a.json").read_text())["settings"]["reference_stats"] is None


def test_stats_made_otherwise_are_refused(eval_run, tmp_path, stats_file, inception_file, inception_state):
    other = tmp_path / "other.npz"
    compute_stats(str(eval_run / "val" / "*.tar"), other, image_size=8, num_workers=0,
                  inception_weights=inception_file, quiet=True)
    with pytest.raises(EvalError, match="other settings .*image_size: 8 in the file, 16 here"):
        evaluate(eval_run / "run", inception_weights=inception_file, reference_stats=other, quiet=True,
                 out=tmp_path / "x.json")
    changed = tmp_path / "changed-inception.pth"
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in inception_state.items()}, changed)
    with pytest.raises(EvalError, match="inception_sha256"):
        evaluate(eval_run / "run", inception_weights=changed, reference_stats=stats_file, quiet=True,
                 out=tmp_path / "y.json")
    with pytest.raises(EvalError, match="r-FID is off"):
        evaluate(eval_run / "run", fid=False, reference_stats=stats_file, quiet=True, out=tmp_path / "z.json")
    with pytest.raises(EvalError, match="needs the Inception weights"):
        evaluate(eval_run / "run", reference_stats=stats_file, quiet=True, out=tmp_path / "w.json")
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    with pytest.raises(EvalError, match="not a reference statistics file"):
        evaluate(eval_run / "run", inception_weights=inception_file, reference_stats=tmp_path / "bad.npz",
                 quiet=True, out=tmp_path / "v.json")
    assert not any((tmp_path / n).exists() for n in ("x.json", "y.json", "z.json", "w.json", "v.json"))


def test_stats_need_weights_images_and_an_npz(eval_run, tmp_path, inception_file):
    with pytest.raises(StatsError, match="FID statistics need Inception"):
        compute_stats(str(eval_run / "val" / "*.tar"), tmp_path / "s.npz", image_size=16, quiet=True)
    with pytest.raises(StatsError, match="ending in .npz"):
        compute_stats(str(eval_run / "val" / "*.tar"), tmp_path / "s.json", image_size=16, num_workers=0,
                      inception_weights=inception_file, quiet=True)
    with pytest.raises(StatsError, match="image_size must be at least 8"):
        compute_stats(str(eval_run / "val" / "*.tar"), tmp_path / "s.npz", image_size=4,
                      inception_weights=inception_file, quiet=True)


def rvq(*args, env=None):
    return subprocess.run([RVQ, *map(str, args)], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, **(env or {})))


@pytest.mark.slow  # two Inception passes in subprocesses; the same path in-process: the tests above and below
def test_cli_stats_then_eval(eval_run, tmp_path, inception_file):
    env = {"RVQ_INCEPTION_WEIGHTS": str(inception_file), "TORCH_HOME": str(tmp_path / "th")}
    res = rvq("data", "stats", eval_run / "val" / "*.tar", tmp_path / "r.npz", "--image-size", "16",
              "--num-workers", "0", "-q", env=env)
    assert res.returncode == 0, res.stderr
    assert "10 images" in res.stdout and "--reference-stats" in res.stdout
    res = rvq("eval", eval_run / "run", "--reference-stats", tmp_path / "r.npz", "--out", tmp_path / "e.json",
              "--no-lpips", "-q", env=env)
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "e.json").read_text())["metrics"]["rfid"] is not None


def test_cli_stats_and_eval_refuse_bad_input(eval_run, tmp_path, inception_file):
    env = {"RVQ_INCEPTION_WEIGHTS": str(inception_file), "TORCH_HOME": str(tmp_path / "th")}
    res = rvq("data", "stats", eval_run / "val" / "*.tar", tmp_path / "r.npz", "--image-size", "16", "--crop",
              "middle", env=env)
    assert res.returncode == 2 and "crop must be 'random'" in res.stderr and "Traceback" not in res.stderr
    res = rvq("eval", eval_run / "run", "--reference-stats", tmp_path / "none.npz", env=env)
    assert res.returncode == 2 and "none.npz: no such file" in res.stderr


def test_compare_makes_the_stats_once_for_every_run(eval_run, tmp_path, inception_file):
    from rvq_cli.compare import compare

    said = []
    kw = dict(seeds=1, out=tmp_path / "cmp", inception_weights=inception_file, quiet=True, lpips=False,
              say=said.append)
    res = compare(["ste", "rotation"], eval_run / "tiny.yaml", ["train.steps=1"], **kw)
    assert sum("FID reference statistics" in m for m in said) == 1
    stats = tmp_path / "cmp" / "reference-stats.npz"
    assert read_stats(stats).n == 10
    for run in res.runs:
        report = json.loads((run.run_dir / "compare-eval.json").read_text())
        assert report["settings"]["reference_stats"]["path"] == str(stats)
        assert report["metrics"]["rfid"] is not None and run.eval["rfid"] == report["metrics"]["rfid"]
    said.clear()
    compare(["ste", "rotation"], eval_run / "tiny.yaml", ["train.steps=1"], **kw)  # reused, not made again
    assert not any("FID reference statistics" in m for m in said)
