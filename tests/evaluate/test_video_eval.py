"""rvq eval on a video tokenizer: per-frame metrics and r-FVD (I3D with weights the test creates),
against independent computations; and the I3D loader's safety and messages."""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from safetensors.torch import save_file

from rvq_cli.config import load_recipe
from rvq_cli.data.video import video_batches
from rvq_cli.evaluation import EvalError, evaluate
from rvq_cli.evaluation.i3d import I3D, I3DError, _same_pad, find_i3d_weights, i3d_features, load_i3d, preprocess
from rvq_cli.runs import load_tokenizer
from rvq_cli.training import train
from tiny import TINY_VIDEO


@pytest.fixture(autouse=True)
def no_cached_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.cache/videogpt
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("RVQ_I3D_WEIGHTS", raising=False)
    monkeypatch.delenv("RVQ_INCEPTION_WEIGHTS", raising=False)


@pytest.fixture(scope="module")
def i3d_file(tmp_path_factory):
    torch.manual_seed(0)
    model = I3D()
    for m in model.modules():  # non-trivial BatchNorm statistics, as trained weights have
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("i3d") / "i3d_pretrained_400.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def video_run(tmp_path_factory, video_shards):
    root = tmp_path_factory.mktemp("vrun")
    path = root / "video.yaml"
    path.write_text(TINY_VIDEO.format(train=video_shards[0], val=video_shards[1], estimator="rotation",
                                      out=root / "run"))
    train(load_recipe(path, ["data.frames=9", "data.frame_stride=1", "train.steps=2"]), quiet=True)
    return root / "run"


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_same_padding_gives_ceil_of_size_over_stride():
    for size in (7, 8, 9, 16):
        x = torch.zeros(1, 1, size, size, size)
        for k, s in ((3, 1), (3, 2), (7, 2), (2, 2), (1, 1)):
            y = torch.nn.functional.max_pool3d(_same_pad(x, (k,) * 3, (s,) * 3), k, s)
            assert y.shape[2:] == (-(-size // s),) * 3


def test_i3d_layout_and_output():
    model = I3D().eval()
    keys = model.state_dict().keys()
    assert {"Conv3d_1a_7x7.conv3d.weight", "Mixed_3b.b1b.bn.running_var", "Mixed_5c.b3b.conv3d.weight",
            "logits.conv3d.bias"} <= set(keys)
    assert 12_000_000 < sum(p.numel() for p in model.parameters()) < 13_500_000
    clips = torch.rand(2, 3, 9, 40, 56) * 2 - 1
    x = preprocess(clips)
    assert x.shape == (2, 3, 9, 224, 224) and x.min() >= -1 and x.max() <= 1
    assert i3d_features(model, clips).shape == (2, 400)
    with pytest.raises(I3DError, match="at least 9 frames"):
        i3d_features(model, clips[:, :, :8])


def test_i3d_weights_load_safely_and_say_what_is_wrong(tmp_path, i3d_file, monkeypatch):
    state = torch.load(i3d_file, weights_only=True)
    st = tmp_path / "i3d.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(st))
    a, b = load_i3d(i3d_file), load_i3d(st)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(Path("/")))  # an object, not tensors: weights_only refuses it
    with pytest.raises(I3DError, match="not a readable tensor state dict"):
        load_i3d(evil)
    partial = tmp_path / "partial.pt"
    torch.save({k: v for k, v in state.items() if not k.startswith("logits")}, partial)
    with pytest.raises(I3DError, match="does not fit Inception-I3D"):
        load_i3d(partial)
    assert find_i3d_weights() is None
    monkeypatch.setenv("RVQ_I3D_WEIGHTS", str(tmp_path / "nope.pt"))
    with pytest.raises(I3DError, match="does not exist"):
        find_i3d_weights()
    monkeypatch.setenv("RVQ_I3D_WEIGHTS", str(i3d_file))
    assert find_i3d_weights() == i3d_file


def test_video_eval_per_frame_metrics_and_rfvd(video_run, i3d_file, tmp_path):
    result = evaluate(video_run, i3d_weights=i3d_file, fid=False, out=tmp_path / "e.json", quiet=True)
    r = result.report
    m = r["metrics"]
    assert r["data"]["images"] == 2 and r["data"]["frames"] == 18 and r["data"]["frames_per_clip"] == 9
    assert r["settings"]["i3d_weights"] == str(i3d_file)
    # independent: the same centred clips, the same model, metrics by hand
    tok = load_tokenizer(video_run)
    recipe = tok.recipe
    batches = list(video_batches(recipe.data.val, frames=9, stride=1, image_size=16, batch_size=8, train=False,
                                 seed=recipe.train.seed))
    keys = [k for b in batches for k in b["key"]]
    x = torch.cat([b["video"] for b in batches])[np.argsort(keys)]
    with torch.no_grad():
        rec = tok.model(x).reconstruction.float()
    assert m["mse"] == pytest.approx(float((rec.double() - x.double()).pow(2).mean()), rel=1e-6)
    x8 = ((x.clamp(-1, 1) + 1) * 127.5).round().clamp(0, 255)
    r8 = ((rec.clamp(-1, 1) + 1) * 127.5).round().clamp(0, 255)
    mse_f = (x8 - r8).pow(2).mean(dim=(1, 3, 4))  # (B, T): per frame
    psnr = (10 * torch.log10(255.0**2 / mse_f.clamp_min(1e-10))).mean()
    assert m["psnr"] == pytest.approx(float(psnr), rel=1e-4)
    i3d = load_i3d(i3d_file)
    fvd = frechet(i3d_features(i3d, x).numpy(), i3d_features(i3d, rec.clamp(-1, 1)).numpy())
    assert m["rfvd"] == pytest.approx(fvd, rel=1e-3, abs=1e-3)
    assert json.loads((tmp_path / "e.json").read_text())["metrics"]["rfvd"] == m["rfvd"]
    assert (tmp_path / "e.png").is_file()


def test_video_eval_without_i3d_weights_says_where_to_put_them(video_run, tmp_path):
    result = evaluate(video_run, fid=False, out=tmp_path / "e.json", quiet=True)
    assert result.report["metrics"]["rfvd"] is None
    assert any("i3d_pretrained_400.pt" in n and "pass i3d_weights PATH" in n for n in result.notes)
    with pytest.raises(EvalError, match="does not exist"):
        evaluate(video_run, fid=False, i3d_weights=tmp_path / "missing.pt", out=tmp_path / "f.json", quiet=True)
    assert not (tmp_path / "f.json").exists()
