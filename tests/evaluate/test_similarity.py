"""SSIM and LPIPS in rvq eval: SSIM against scikit-image's implementation, the AlexNet trunk's
layers against torchvision's AlexNet, eval.json's values against a computation here, and what
happens without the trunk weights."""

import json

import pytest
import torch
import torchvision
from skimage.metrics import structural_similarity
from test_eval import val_images

from rvq_cli.data.images import to_uint8
from rvq_cli.evaluation import evaluate
from rvq_cli.evaluation.similarity import SSIM_SETTINGS, LpipsSet, ssim
from rvq_cli.losses.perceptual import LPIPS, PerceptualError
from rvq_cli.runs import load_tokenizer

pytestmark = pytest.mark.usefixtures("no_cached_weights")


def _pair(size, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (2, 3, size, size), generator=g, dtype=torch.uint8)
    r = (x.int() + torch.randint(-40, 41, x.shape, generator=g)).clamp(0, 255).to(torch.uint8)
    return x, r


def test_ssim_agrees_with_scikit_image():
    """Wang et al.'s SSIM, Gaussian window σ = 1.5, data range 1: the two implementations treat the
    border differently, which shrinks with the image (1e-4 at 128², measured 3e-4 at the worst)."""
    x, r = _pair(128)
    ours = ssim(x, r).double()
    ref = [structural_similarity(x[i].permute(1, 2, 0).numpy() / 255, r[i].permute(1, 2, 0).numpy() / 255,
                                 channel_axis=-1, data_range=1.0, gaussian_weights=True, sigma=SSIM_SETTINGS["sigma"],
                                 use_sample_covariance=False) for i in range(2)]
    torch.testing.assert_close(ours, torch.tensor(ref, dtype=torch.float64), atol=5e-4, rtol=0)
    assert torch.equal(ssim(x, x), torch.ones(2)) and bool((ours < 1).all())


def test_alexnet_trunk_layers_are_torchvisions(alex_file):
    """The lpips AlexNet's five slices give torchvision AlexNet's relu1..relu5 on the same weights."""
    lp = LPIPS(alex_file, net="alex")
    tv = torchvision.models.alexnet(weights=None).features.eval()
    tv.load_state_dict({k[len("features."):]: v for k, v in torch.load(alex_file).items()})
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        outs = lp.net.net(x)
        want, h = [], x
        for i, layer in enumerate(tv):
            h = layer(h)
            if i in (1, 4, 7, 9, 11):
                want.append(h.clone())
    for got, ref in zip(outs, want):
        torch.testing.assert_close(got, ref)
    y = torch.rand(2, 3, 64, 64) * 2 - 1
    d = lp(x, y)
    assert d.shape == (2,) and bool((d > 0).all()) and torch.allclose(lp(x, x), torch.zeros(2), atol=1e-7)


def test_a_file_that_is_not_an_alexnet_is_refused(vgg_file):
    with pytest.raises(PerceptualError, match="not torchvision.s AlexNet weights .size mismatch for slice1.0.weight"):
        LPIPS(vgg_file, net="alex")


@pytest.fixture(scope="module")
def run32(tmp_path_factory):
    """A 2-step tiny run on 32-pixel crops (AlexNet's trunk takes 31 pixels and more); val: 6 images."""
    from rvq_cli.config import load_recipe
    from rvq_cli.data import write_shards
    from rvq_cli.training import train
    from tiny import TINY, png

    root = tmp_path_factory.mktemp("run32")
    write_shards(({"__key__": f"t{i:03d}", "png": png(i, 40, 40)} for i in range(8)), root / "train", max_count=8)
    write_shards(({"__key__": f"v{i:03d}", "png": png(50 + i, 40, 40)} for i in range(6)), root / "val", max_count=8)
    recipe = root / "tiny.yaml"
    recipe.write_text(TINY.format(train=root / "train" / "*.tar", val=root / "val" / "*.tar", out=root / "run")
                      .replace("image_size: 16", "image_size: 32"))
    train(load_recipe(recipe, ["train.steps=2"]), quiet=True)
    return root


def _val32(root):
    import webdataset as wds

    from rvq_cli.data.images import center_crop, decode_rgb, to_batch

    shard = str(next((root / "val").glob("*.tar")))
    return to_batch([center_crop(decode_rgb(s["png"]), 32) for s in wds.WebDataset(shard, shardshuffle=False)])


def test_eval_reports_ssim_and_lpips_with_their_settings(run32, tmp_path, alex_file, vgg_file, monkeypatch):
    monkeypatch.setenv("RVQ_ALEXNET_WEIGHTS", str(alex_file))
    monkeypatch.setenv("RVQ_VGG16_WEIGHTS", str(vgg_file))
    result = evaluate(run32 / "run", batch_size=4, fid=False, out=tmp_path / "e.json", quiet=True)
    m = result.metrics
    x = _val32(run32)
    with torch.no_grad():
        rec = load_tokenizer(run32 / "run").model(x).reconstruction
    x8, r8 = to_uint8(x), to_uint8(rec)
    assert m["ssim"] == pytest.approx(float(ssim(x8, r8).double().mean()), rel=1e-6)
    nets = LpipsSet("cpu", image_size=32)
    direct = nets(x8, r8)
    assert m["lpips_alex"] == pytest.approx(float(direct["lpips_alex"].double().mean()), rel=1e-5)
    assert m["lpips_vgg"] == pytest.approx(float(direct["lpips_vgg"].double().mean()), rel=1e-5)
    assert 0 < m["lpips_alex"] and m["lpips_alex"] != m["lpips_vgg"]
    settings = json.loads((tmp_path / "e.json").read_text())["settings"]
    assert settings["ssim"] == SSIM_SETTINGS
    assert settings["lpips"]["trunks"] == {"alex": str(alex_file), "vgg": str(vgg_file)}
    assert settings["lpips"]["version"] == "0.1"
    assert not any("lpips_" in n for n in result.notes)


def test_images_too_small_for_alexnet_get_vgg_only(eval_run, tmp_path, alex_file, vgg_file, monkeypatch):
    monkeypatch.setenv("RVQ_ALEXNET_WEIGHTS", str(alex_file))
    monkeypatch.setenv("RVQ_VGG16_WEIGHTS", str(vgg_file))
    result = evaluate(eval_run / "run", batch_size=4, fid=False, out=tmp_path / "e.json", quiet=True)
    assert result.metrics["lpips_alex"] is None and result.metrics["lpips_vgg"] > 0
    assert any("lpips_alex skipped: the AlexNet trunk needs images of at least 31 pixels, these are 16" in n
               for n in result.notes)
    _, x = val_images(eval_run)
    with torch.no_grad():
        rec = load_tokenizer(eval_run / "run").model(x).reconstruction
    assert result.metrics["ssim"] == pytest.approx(float(ssim(to_uint8(x), to_uint8(rec)).double().mean()), rel=1e-6)


def test_eval_without_trunk_weights_says_where_to_put_them(run32, tmp_path):
    result = evaluate(run32 / "run", batch_size=4, fid=False, out=tmp_path / "e.json", quiet=True)
    assert result.metrics["lpips_alex"] is None and result.metrics["lpips_vgg"] is None
    assert result.metrics["ssim"] is not None
    notes = " ".join(result.notes)
    assert "lpips_alex skipped" in notes and "alexnet-owt-7be5be79.pth" in notes and "RVQ_ALEXNET_WEIGHTS" in notes
    assert "lpips_vgg skipped" in notes and "vgg16-397923af.pth" in notes
    quiet = evaluate(run32 / "run", batch_size=4, fid=False, out=tmp_path / "f.json", quiet=True, lpips=False)
    assert not any("lpips" in n for n in quiet.notes) and quiet.metrics["lpips_alex"] is None


def test_a_weights_path_that_does_not_exist_is_a_note(run32, tmp_path, monkeypatch):
    monkeypatch.setenv("RVQ_ALEXNET_WEIGHTS", str(tmp_path / "gone.pth"))
    result = evaluate(run32 / "run", batch_size=4, fid=False, out=tmp_path / "e.json", quiet=True)
    assert any("lpips_alex skipped" in n and "gone.pth" in n and "does not exist" in n for n in result.notes)
