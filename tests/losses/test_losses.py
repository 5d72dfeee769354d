"""LPIPS (the lpips package, VGG16 weights the test creates), the PatchGAN, the GAN losses, and
VQGAN's adaptive weight against its formula computed with separate backward passes."""

import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from rvq_cli.losses import (
    LPIPS,
    PatchDiscriminator,
    PerceptualError,
    adaptive_weight,
    find_vgg_weights,
    generator_loss,
    hinge_d_loss,
    pixel_losses,
    vanilla_d_loss,
)
from rvq_cli.losses.perceptual import VGG16_URL, default_vgg_path
from rvq_cli.models import build_conv_tokenizer


@pytest.fixture(autouse=True)
def clean_env(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("RVQ_VGG16_WEIGHTS", raising=False)


def test_lpips_is_zero_for_identical_images_and_positive_otherwise(vgg_file):
    m = LPIPS(vgg_file)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    y = (x + 0.3 * torch.randn_like(x)).clamp(-1, 1)
    assert torch.equal(m(x, x), torch.zeros(3))
    d = m(x, y)
    assert d.shape == (3,) and (d > 0).all()
    assert not any(p.requires_grad for p in m.parameters())
    m.train()
    assert not m.training  # stays in eval mode inside a training model


def test_lpips_uses_the_given_vgg_and_the_packaged_linear_heads(vgg_file):
    import lpips

    m = LPIPS(vgg_file)
    vgg = torch.load(vgg_file, weights_only=True)
    assert torch.equal(m.net.net.slice1[0].weight, vgg["features.0.weight"])
    assert torch.equal(getattr(m.net.net.slice5, "28").bias, vgg["features.28.bias"])
    heads = torch.load(Path(lpips.__file__).parent / "weights" / "v0.1" / "vgg.pth", map_location="cpu",
                       weights_only=True)
    assert torch.equal(m.net.lin0.model[1].weight, heads["lin0.model.1.weight"])


def test_lpips_gradient_reaches_the_reconstruction(vgg_file):
    m = LPIPS(vgg_file)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    rec = torch.zeros_like(x, requires_grad=True)
    m(x, rec).mean().backward()
    assert rec.grad is not None and rec.grad.abs().sum() > 0


def test_vgg_weights_are_found_in_order(vgg_file, tmp_path, monkeypatch):
    with pytest.raises(PerceptualError) as err:
        find_vgg_weights()
    assert VGG16_URL in str(err.value) and str(default_vgg_path()) in str(err.value)
    default_vgg_path().parent.mkdir(parents=True)
    default_vgg_path().write_bytes(vgg_file.read_bytes())
    assert find_vgg_weights() == default_vgg_path()
    monkeypatch.setenv("RVQ_VGG16_WEIGHTS", str(vgg_file))
    assert find_vgg_weights() == vgg_file
    with pytest.raises(PerceptualError, match="nowhere.pth"):
        find_vgg_weights(tmp_path / "nowhere.pth")


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_unusable_vgg_files_are_refused_without_running_code(vgg_file, tmp_path):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"features.0.weight": _Payload(marker)}, f)
    with pytest.raises(PerceptualError):
        LPIPS(evil)
    assert not marker.exists()
    (tmp_path / "half.pth").write_bytes(vgg_file.read_bytes()[:1000])
    with pytest.raises(PerceptualError, match="could not be read"):
        LPIPS(tmp_path / "half.pth")
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "small.pth")
    with pytest.raises(PerceptualError, match="not a torchvision VGG16"):
        LPIPS(tmp_path / "small.pth")
    save_file({k: v.contiguous() for k, v in torch.load(vgg_file, weights_only=True).items()},
              str(tmp_path / "vgg.safetensors"))
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert torch.equal(LPIPS(tmp_path / "vgg.safetensors")(x, -x), LPIPS(vgg_file)(x, -x))


@pytest.mark.parametrize("norm", ["batch", "group", "none"])
def test_patch_discriminator_shapes(norm):
    d = PatchDiscriminator(3, 8, 3, norm)
    assert d(torch.randn(2, 3, 64, 64)).shape == (2, 1, 6, 6)  # 64 -> 8 after 3 stride-2 convs, then 7, 6
    assert PatchDiscriminator(3, 8, 2, norm)(torch.randn(1, 3, 16, 16)).shape == (1, 1, 2, 2)
    with pytest.raises(ValueError, match="norm"):
        PatchDiscriminator(norm="layer")


def test_gan_losses_on_known_logits():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.0])
    # hinge: relu(1 - real) = [0, 0.5, 2], relu(1 + fake) = [0, 1, 2]
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (2.5 / 3 + 3 / 3))
    sp = torch.nn.functional.softplus
    assert vanilla_d_loss(real, fake).item() == pytest.approx(0.5 * (sp(-real).mean() + sp(fake).mean()).item())
    assert generator_loss(fake).item() == pytest.approx(1 / 3)


def test_pixel_terms():
    x, rec = torch.zeros(1, 3, 2, 2), torch.full((1, 3, 2, 2), 0.5)
    t = pixel_losses(x, rec, "l2")
    assert t["rec"].item() == pytest.approx(0.25)
    assert t["laplace"].item() == pytest.approx(0.25)  # |0.5 - 0| / 2 on [0, 1] images
    assert t["gaussian"].item() == pytest.approx(0.0625)
    assert pixel_losses(x, rec, "l1")["rec"].item() == pytest.approx(0.5)


def test_adaptive_weight_equals_its_formula():
    torch.manual_seed(0)
    model = build_conv_tokenizer(ch=8, ch_mult=(1, 2), attn_resolutions=(), resolution=16, z_channels=4, embed_dim=4,
                                 quantizer={"codebook_size": 16, "estimator": "rotation"}, num_res_blocks=1,
                                 norm_groups=4)
    disc = PatchDiscriminator(3, 8, 2, "group")
    x = torch.rand(2, 3, 16, 16) * 2 - 1

    def losses():
        rec = model(x).reconstruction
        return pixel_losses(x, rec, "l1")["rec"], generator_loss(disc(rec))

    nll, g = losses()
    lam = adaptive_weight(nll, g, model.last_layer)
    # the formula, from two separate backward passes
    model.zero_grad()
    nll.backward(retain_graph=True)
    g_nll = model.last_layer.grad.clone()
    model.zero_grad()
    g.backward()
    g_adv = model.last_layer.grad.clone()
    expected = g_nll.norm() / (g_adv.norm() + 1e-4)
    assert lam.item() == pytest.approx(expected.item(), rel=1e-5)
    assert not lam.requires_grad
    nll, g = losses()
    assert adaptive_weight(nll, g * 1e-12, model.last_layer, max_weight=7.0).item() == 7.0  # clamped


def test_patchgan_is_tamings_nlayer_discriminator():
    """taming-transformers' NLayerDiscriminator (the peer package, modules only): the same layers
    under the same state-dict keys, the same logits for the same weights, and its init (conv
    weights N(0, 0.02) with PyTorch's default conv biases kept; BatchNorm N(1, 0.02) / 0)."""
    from taming.modules.discriminator.model import NLayerDiscriminator, weights_init

    from rvq_cli.losses import PatchDiscriminator

    torch.manual_seed(0)
    theirs = NLayerDiscriminator(input_nc=3, ndf=16, n_layers=3).apply(weights_init).eval()
    torch.manual_seed(0)
    ours = PatchDiscriminator(3, 16, 3, "batch").eval()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        assert a.shape == b.shape, name
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ours(x), theirs(x))
    first, last = PatchDiscriminator(3, 16, 3, "batch").main[0], PatchDiscriminator(3, 16, 3, "batch").main[-1]
    for conv in (first, last):
        bound = 1 / (conv.in_channels * 16) ** 0.5
        b = conv.bias.detach().abs().max()
        assert bound / 10 < b <= bound  # PyTorch's default kept
        assert abs(float(conv.weight.detach().std()) - 0.02) < 0.004
