"""The ViT-VQGAN (Table 4) adversarial setup: StyleGAN2's discriminator against the structure of
enhancing-transformers' StyleDiscriminator, the non-saturating losses against their formulas,
R1 against independent gradients, the lazy interval, the recipe keys, and R1 through DDP."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rvq_cli.config import GANConfig, LossConfig, RecipeError, load_recipe
from rvq_cli.losses import GAN_LOSSES, StyleGAN2Discriminator, non_saturating_g_loss, r1_penalty, vanilla_d_loss
from rvq_cli.losses.stylegan import blur, mbstd_group, minibatch_stddev, stylegan2_channels
from rvq_cli.training.objective import Objective, build_disc_optimizer, build_discriminator


def tiny(size=16, **kw):
    torch.manual_seed(0)
    return StyleGAN2Discriminator(size, 3, 2, kw.pop("max_channels", 8), **kw)


# ------------------------------------------------------------------ the discriminator


def test_channel_table_is_stylegan2s():
    # enhancing-transformers layers.py StyleDiscriminator, channel_multiplier 2
    upstream = {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128, 512: 64, 1024: 32}
    assert {r: stylegan2_channels(r) for r in upstream} == upstream
    assert stylegan2_channels(64, 1) == 256 and stylegan2_channels(16, 2, 8) == 8


def test_parameter_count_at_256_matches_the_upstream_structure():
    """1×1 conv 3 → 128 (+ bias), six residual blocks 128 → 256 → 512 → 512 → 512 → 512 → 512 (two
    biased 3×3 convs and a bias-free 1×1 skip each), 3×3 conv 513 → 512, linear 8192 → 512 → 1."""
    def conv(i, o, k, bias=True):
        return i * o * k * k + (o if bias else 0)

    chans = [128, 256, 512, 512, 512, 512, 512]
    n = conv(3, 128, 1) + sum(conv(i, i, 3) + conv(i, o, 3) + conv(i, o, 1, False) for i, o in zip(chans, chans[1:]))
    n += conv(513, 512, 3) + (8192 * 512 + 512) + (512 + 1)
    assert n == 28_864_129
    assert sum(p.numel() for p in StyleGAN2Discriminator(256).parameters()) == n


@pytest.mark.parametrize("size", [8, 16, 32])
@pytest.mark.parametrize("batch", [1, 2, 5, 6, 9])
def test_forward_gives_one_logit_per_image(size, batch):
    d = tiny(size)
    out = d(torch.rand(batch, 3, size, size))
    assert out.shape == (batch,) and torch.isfinite(out).all()


def test_bad_sizes_are_clear_errors():
    for size in (4, 12, 48, 0):
        with pytest.raises(ValueError, match="power of two"):
            StyleGAN2Discriminator(size)
    with pytest.raises(ValueError, match=r"built for \(B, C, 16, 16\)"):
        tiny(16)(torch.rand(2, 3, 32, 32))


def test_equalised_learning_rate_and_blur():
    d = tiny(16)
    conv = d.blocks[1].conv1
    assert conv.scale == pytest.approx(1 / math.sqrt(8 * 9))  # weights N(0, 1), scaled by 1/√fan_in
    assert all(not p.detach().any() for n, p in d.named_parameters() if n.endswith("bias"))
    assert not list(d.buffers())  # nothing for DDP to broadcast into a saved tensor
    x = torch.ones(1, 2, 8, 8)
    y = blur(x, 4)  # padding (2, 2) before a 3×3 stride-2 conv
    assert y.shape == (1, 2, 9, 9) and torch.allclose(y[..., 2:-2, 2:-2], torch.ones(1, 2, 5, 5))
    assert conv(torch.rand(1, 8, 8, 8)).shape == (1, 8, 8, 8)
    assert d.blocks[1].conv2(torch.rand(1, 8, 16, 16)).shape == (1, 8, 8, 8)
    assert d.blocks[1].skip(torch.rand(1, 8, 16, 16)).shape == (1, 8, 8, 8)


def test_minibatch_stddev_against_a_loop():
    assert [mbstd_group(b) for b in (1, 2, 3, 4, 6, 8, 9, 10, 32)] == [1, 2, 3, 4, 6, 4, 3, 5, 4]
    h = torch.randn(8, 5, 4, 4)
    out = minibatch_stddev(h)
    assert out.shape == (8, 6, 4, 4) and torch.equal(out[:, :5], h)
    g, m = 4, 2  # groups are strided: sample n is with n ± m, n ± 2m, ...
    for n in range(8):
        members = h[[j for j in range(8) if j % m == n % m]]
        assert len(members) == g
        want = (members.var(0, unbiased=False) + 1e-8).sqrt().mean()
        assert torch.allclose(out[n, 5], want.expand(4, 4))


def test_the_discriminator_learns_to_separate():
    d = tiny(8)
    opt = torch.optim.Adam(d.parameters(), lr=1e-2, betas=(0.9, 0.99))
    real = torch.full((4, 3, 8, 8), 0.8) + 0.05 * torch.randn(4, 3, 8, 8)
    fake = torch.rand(4, 3, 8, 8)
    losses = []
    for _ in range(20):
        loss = vanilla_d_loss(d(real), d(fake))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert (d(real) > d(fake).max()).all()


# ------------------------------------------------------------------ losses and R1


def test_non_saturating_losses_are_their_formulas():
    real, fake = torch.tensor([2.0, 0.5, -1.0, 0.0]), torch.tensor([-2.0, 0.0, 1.0, 3.0])
    sig = torch.sigmoid
    # generator: −E log σ(D(x̂)); discriminator: −½(E log σ(D(x)) + E log(1 − σ(D(x̂))))
    assert non_saturating_g_loss(fake).item() == pytest.approx(-torch.log(sig(fake)).mean().item())
    ns = GAN_LOSSES["non_saturating"]
    want_d = -0.5 * (torch.log(sig(real)).mean() + torch.log(1 - sig(fake)).mean())
    assert ns.d(real, fake).item() == pytest.approx(want_d.item(), rel=1e-6)
    assert ns.g(fake).item() == pytest.approx(non_saturating_g_loss(fake).item())
    for name in ("hinge", "vanilla"):  # taming's generator loss, unchanged
        assert GAN_LOSSES[name].g(fake).item() == pytest.approx(-fake.mean().item())
    assert GAN_LOSSES["vanilla"].d is GAN_LOSSES["non_saturating"].d


def test_r1_of_a_quadratic_and_its_parameter_gradient():
    """D(x)_n = Σ w·x_n²: ∇_x = 2w·x_n, penalty = mean_n Σ 4w²x_n², d penalty/dw = mean_n Σ 8w·x_n²."""
    w = torch.tensor(0.7, requires_grad=True)
    x = torch.randn(3, 2, 4, 4, requires_grad=True)
    logits = (w * x.square()).flatten(1).sum(1)
    pen = r1_penalty(logits, x)
    assert pen.item() == pytest.approx((4 * w**2 * x.square()).flatten(1).sum(1).mean().item(), rel=1e-6)
    (gw,) = torch.autograd.grad(pen, w)  # through create_graph
    assert gw.item() == pytest.approx((8 * w * x.square()).flatten(1).sum(1).mean().item(), rel=1e-5)


def test_r1_of_the_discriminator_against_finite_differences():
    d = tiny(8).double()
    x = torch.rand(3, 3, 8, 8, dtype=torch.float64)  # three samples share a stddev group
    leaf = x.clone().requires_grad_(True)
    pen = r1_penalty(d(leaf), leaf)
    eps, grad = 1e-6, torch.zeros_like(x)
    with torch.no_grad():
        for i in range(x.numel()):
            e = torch.zeros(x.numel(), dtype=x.dtype)
            e[i] = eps
            e = e.view_as(x)
            grad.view(-1)[i] = (d(x + e).sum() - d(x - e).sum()) / (2 * eps)
    assert pen.item() == pytest.approx(grad.square().flatten(1).sum(1).mean().item(), rel=1e-6)


def _objective(**gan):
    cfg = LossConfig(gan=GANConfig(weight=0.1, discriminator="stylegan2", loss="non_saturating", adaptive=False,
                                   stylegan2={"max_channels": 8}, **gan))
    disc = build_discriminator(cfg, 3, 8)
    return Objective(cfg, None, disc, disc), disc


def test_lazy_r1_applies_on_every_kth_step_scaled_by_k():
    obj, disc = _objective(r1_gamma=10.0, r1_every=16)
    assert [s for s in range(50) if obj.r1_on(s)] == [0, 16, 32, 48]
    late, _ = _objective(r1_gamma=10.0, r1_every=16, start=20)
    assert [s for s in range(50) if late.r1_on(s)] == [32, 48]
    off, _ = _objective(r1_gamma=0.0)
    assert not any(off.r1_on(s) for s in range(50)) and "r1" not in off.gan_keys
    assert "r1" in obj.gan_keys
    torch.manual_seed(1)
    x, rec = torch.rand(4, 3, 8, 8) * 2 - 1, torch.rand(4, 3, 8, 8) * 2 - 1
    x01 = ((x + 1) / 2).requires_grad_(True)  # StyleGAN2 judges [0, 1] images, as upstream
    real, fake = disc(x01), disc((rec + 1) / 2)
    (g,) = torch.autograd.grad(real.sum(), x01)
    penalty = g.square().sum((1, 2, 3)).mean()
    base = 0.5 * (F.softplus(-real).mean() + F.softplus(fake).mean())
    for step in (0, 16):  # with R1: (γ/2)·every·penalty, as enhancing-transformers' vqperceptual.py
        d_loss, terms = obj.discriminator(x, rec, step)
        assert d_loss.item() == pytest.approx((base + 10.0 / 2 * 16 * penalty).item(), rel=1e-5)
        assert terms["r1"].item() == pytest.approx(penalty.item(), rel=1e-5)
    for step in (1, 15, 17):
        d_loss, terms = obj.discriminator(x, rec, step)
        assert d_loss.item() == pytest.approx(base.item(), rel=1e-6) and "r1" not in terms
    d_loss.backward()
    assert x.grad is None  # the trainer's batch is never made a graph leaf


def test_disc_optimizer_is_the_one_named():
    obj, disc = _objective(optimizer="adamw", betas=(0.9, 0.99), weight_decay=1e-4)
    opt = build_disc_optimizer(disc, obj.cfg, 1e-4)
    assert type(opt) is torch.optim.AdamW
    assert opt.defaults["betas"] == (0.9, 0.99) and opt.defaults["weight_decay"] == 1e-4
    plain = build_disc_optimizer(disc, LossConfig(gan=GANConfig(weight=0.1)), 1e-4)
    assert type(plain) is torch.optim.Adam and plain.defaults["weight_decay"] == 0.0  # taming's, unchanged


# ------------------------------------------------------------------ recipe keys

STYLE = ["loss.gan.weight=0.1", "loss.gan.discriminator=stylegan2"]


def _problems(tmp_path, overrides):
    path = tmp_path / "r.yaml"
    path.write_text("data: {image_size: 64}\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(path, overrides, check_paths=False)
    return {p.path: p.message for p in err.value.problems}


@pytest.mark.parametrize("overrides, path, words", [
    (STYLE + ["data.image_size=48"], "loss.gan.discriminator", "power of two"),
    (STYLE + ["loss.gan.layers=2"], "loss.gan.layers", "patchgan discriminator only"),
    (STYLE + ["loss.gan.norm=group"], "loss.gan.norm", "patchgan discriminator only"),
    (["loss.gan.weight=0.1", "loss.gan.stylegan2.max_channels=8"], "loss.gan.stylegan2", "stylegan2 discrim"),
    (STYLE + ["loss.gan.r1_every=4"], "loss.gan.r1_every", "r1_gamma is 0"),
    (STYLE + ["loss.gan.discriminator=stylegan3"], "loss.gan.discriminator", "patchgan"),
    (STYLE + ["loss.gan.loss=wasserstein"], "loss.gan.loss", "non_saturating"),
    (STYLE + ["loss.gan.r1_every=0"], "loss.gan.r1_every", "greater than or equal to 1"),
    (STYLE + ["loss.gan.optimizer=sgd"], "loss.gan.optimizer", "adamw"),
])
def test_recipe_keys_are_validated(tmp_path, overrides, path, words):
    problems = _problems(tmp_path, overrides)
    assert path in problems and words in problems[path], problems


def test_defaults_keep_taming_behaviour(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("{}\n")
    g = load_recipe(path, ["loss.gan.weight=0.1"], check_paths=False).loss.gan
    assert (g.discriminator, g.loss, g.r1_gamma, g.optimizer, g.weight_decay) == ("patchgan", "hinge", 0.0, "adam", 0.0)
    assert type(build_discriminator(LossConfig(gan=g), 3, 64)).__name__ == "PatchDiscriminator"
    ok = load_recipe(path, STYLE + ["loss.gan.r1_gamma=10", "loss.gan.r1_every=16"], check_paths=False).loss.gan
    assert ok.r1_every == 16


# ------------------------------------------------------------------ R1 through DDP


@pytest.mark.slow
def test_r1_through_ddp_equals_the_average_of_local_gradients(tmp_path):
    """Known pitfalls (pytorch#47562, #63812; StyleGAN2-ADA's `real_logits * 0`): DDP reduces only
    what reaches .grad in one backward, and a penalty alone leaves the last bias out. Here R1 is
    taken with autograd.grad on the inputs and joins the full loss, so one ordinary backward
    reduces everything: the reduced gradient must be the mean of the ranks' local gradients."""
    worker = Path(__file__).with_name("ddp_r1_worker.py")
    env = dict(os.environ, OMP_NUM_THREADS="1", RVQ_COMPILE="never")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29561",
           str(worker), str(tmp_path)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    a, b = (torch.load(tmp_path / f"grads{r}.pt", weights_only=True) for r in (0, 1))
    for step in (0, 1):
        for name, g in a[f"ddp{step}"].items():
            assert torch.equal(g, b[f"ddp{step}"][name]), name
            mean = (a[f"local{step}_0"][name] + a[f"local{step}_1"][name]) / 2
            torch.testing.assert_close(g, mean, rtol=1e-5, atol=1e-7, msg=name)
    w = "blocks.0.weight"  # R1 matters in the comparison: without it the first layer's gradient is another
    without = (a["no_r1_0"][w] + a["no_r1_1"][w]) / 2
    assert (a["ddp0"][w] - without).norm() > 0.1 * without.norm()
