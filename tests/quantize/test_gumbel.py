"""The gumbel estimator's karpathy/deep-vector-quantization variant (gumbel_logits "linear",
kl_warmup_steps, temperature_steps) against that code's formulas, written out here from its
dvq/model/quantize.py (GumbelQuantize) and dvq/vqvae.py (cos_anneal, DecayTemperature, RampBeta)."""

import math

import pytest
import torch
import torch.nn.functional as F

from rvq_cli.quantize import VectorQuantizer


def cos_anneal(e0, e1, t0, t1, e):
    """karpathy's ramp from value t0 at step e0 to t1 at step e1 (clamped outside)."""
    alpha = max(0, min(1, (e - e0) / (e1 - e0)))
    alpha = 1.0 - math.cos(alpha * math.pi / 2)
    return alpha * t1 + (1 - alpha) * t0


def linear_vq(dim=4, k=16, seed=0, **kw):
    torch.manual_seed(seed)
    kw = dict(update="learned", gumbel_logits="linear", beta=0.0, init="normal") | kw
    return VectorQuantizer(dim, k, "gumbel", **kw)


def karpathy_logits(vq, z):
    """GumbelQuantize.proj: a 1×1 conv num_hiddens -> n_embed with bias, on (B, D, H, W)."""
    w, b = vq.logit_proj.weight.detach(), vq.logit_proj.bias.detach()
    return F.conv2d(z, w[:, :, None, None], b)  # (B, K, H, W)


def test_training_forward_is_karpathys_gumbel_quantize():
    vq = linear_vq(kl_warmup_steps=8).train()
    vq.anneal(3, 10)  # temperature 3/10 of the way, KL weight 3/8 of the way
    tau, kld_scale = cos_anneal(0, 10, 1.0, 1 / 16, 3), cos_anneal(0, 8, 0.0, 5e-4, 3)
    assert vq.temperature == pytest.approx(tau) and vq.kl_scale == pytest.approx(kld_scale)
    z = torch.randn(2, 4, 3, 5, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    embed = vq.codebook.detach().clone()  # (K, D), nn.Embedding's weight there
    torch.manual_seed(7)
    out = vq(z)

    logits = karpathy_logits(vq, z.detach())
    b, k, h, w = logits.shape
    torch.manual_seed(7)  # the same Gumbel(0, 1) draws: one per (row, code), rows in (b, h, w) order
    gumbels = -torch.empty(b * h * w, k).exponential_().log()
    gumbels = gumbels.reshape(b, h, w, k).permute(0, 3, 1, 2)  # (B, K, H, W)
    soft_one_hot = F.softmax((logits + gumbels) / tau, dim=1)
    z_q = torch.einsum("b n h w, n d -> b d h w", soft_one_hot, embed)
    qy = F.softmax(logits, dim=1)
    diff = kld_scale * torch.sum(qy * torch.log(qy * k + 1e-10), dim=1).mean()

    torch.testing.assert_close(out.quantized, z_q, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.losses.prior, diff, rtol=1e-5, atol=1e-12)
    assert float(out.losses.commitment) == 0 and float(out.losses.codebook) == 0  # karpathy has neither term
    assert torch.equal(out.indices, logits.argmax(dim=1))  # the code the logits choose, not the nearest one

    out.quantized.square().sum().backward()
    assert z.grad.abs().sum() > 0  # through the logits
    assert vq.codebook.grad.abs().sum() > 0  # the codebook learns through the mixture
    assert vq.logit_proj.weight.grad.abs().sum() > 0 and vq.logit_proj.bias.grad.abs().sum() > 0


def test_eval_is_the_hard_one_hot_of_the_argmax_logits():
    vq = linear_vq().eval()
    z = torch.randn(2, 4, 3, 5, generator=torch.Generator().manual_seed(2))
    logits = karpathy_logits(vq, z)
    nearest = torch.cdist(z.movedim(1, -1).reshape(-1, 4), vq.codebook.detach()).argmin(-1).reshape(2, 3, 5)
    with torch.no_grad():
        out = vq(z)
    one_hot = F.one_hot(logits.argmax(dim=1), 16).permute(0, 3, 1, 2).float()  # (B, K, H, W)
    assert torch.equal(out.indices, logits.argmax(dim=1))
    assert not torch.equal(out.indices, nearest)  # a different rule from the distance logits' nearest code
    torch.testing.assert_close(out.quantized, torch.einsum("b n h w, n d -> b d h w", one_hot, vq.codebook.detach()),
                               rtol=0, atol=0)
    assert torch.equal(out.quantized, vq.indices_to_codes(out.indices))  # tokens decode to what eval decoded
    assert float(out.losses.total) == 0
    train_out = vq.train()(z.clone().requires_grad_(True))
    assert torch.equal(train_out.indices, out.indices)  # the index does not depend on the mode


@pytest.mark.parametrize("n", [1, 8, 5000])
def test_kl_warmup_is_karpathys_ramp_beta(n):
    vq = linear_vq(kl_warmup_steps=n, kl_weight=5e-4)
    assert vq.kl_scale == 0.0  # before any anneal: the value at step 0
    for step in (0, n // 2, n, 2 * n):
        vq.anneal(step, 10 * n)
        assert vq.kl_scale == pytest.approx(cos_anneal(0, n, 0.0, 5e-4, step), rel=1e-12, abs=0), step
        assert vq.kl_weight_at(step) == vq.kl_scale
    assert vq.kl_weight_at(n) == vq.kl_weight_at(3 * n) == pytest.approx(5e-4)


def test_no_warmup_holds_the_kl_weight_and_the_temperature_horizon_is_an_option():
    vq = VectorQuantizer(4, 16, "gumbel", kl_weight=1e-3)
    assert [vq.kl_weight_at(s) for s in (0, 7, 10**6)] == [1e-3] * 3
    vq.anneal(50, 100)  # the paper: over the run
    assert vq.temperature == pytest.approx(cos_anneal(0, 100, 1.0, 1 / 16, 50))
    fixed = VectorQuantizer(4, 16, "gumbel", temperature_steps=150_000)  # karpathy's DecayTemperature
    for step in (0, 75_000, 150_000, 300_000):
        fixed.anneal(step, 12_500)
        assert fixed.temperature == pytest.approx(cos_anneal(0, 150_000, 1.0, 1 / 16, step)), step


def test_the_logit_projection_leaves_the_other_weights_and_the_global_generator_alone():
    """Same seed, same codebook and same draws afterwards as without the projection: the layers
    built after the quantizer start from the same weights as under every other estimator."""
    a = linear_vq(seed=3)
    after_a = torch.rand(5)
    torch.manual_seed(3)
    b = VectorQuantizer(4, 16, "gumbel", update="learned", init="normal")
    after_b = torch.rand(5)
    assert torch.equal(a.codebook, b.codebook) and torch.equal(after_a, after_b)
    assert b.logit_proj is None and "logit_proj.weight" in a.state_dict()
    bound = 1 / math.sqrt(4)  # nn.Linear's (and nn.Conv2d's) default U(±1/√fan_in)
    assert a.logit_proj.weight.abs().max() <= bound and a.logit_proj.bias.abs().max() <= bound
    assert not torch.equal(linear_vq(seed=3).logit_proj.weight, linear_vq(seed=4).logit_proj.weight)
    torch.testing.assert_close(linear_vq(seed=3).logit_proj.weight, a.logit_proj.weight, rtol=0, atol=0)


@pytest.mark.parametrize("kw, match", [
    (dict(update="ema"), "update='learned'"),
    (dict(codebook_dim=2), "codebook_dim"),
    (dict(gumbel_logits="softmax"), "valid: distance, linear"),
])
def test_linear_logits_refuse_what_they_cannot_do(kw, match):
    with pytest.raises(ValueError, match=match):
        linear_vq(**kw)


def test_linear_logits_are_a_gumbel_option_only():
    with pytest.raises(ValueError, match="gumbel estimator"):
        VectorQuantizer(4, 16, "rotation", update="learned", gumbel_logits="linear")


def test_hard_samples_are_tamings_straight_through_gumbel():
    """gumbel_sample hard (taming's GumbelVQ, straight_through=True): the decoder gets the code of the
    sample's argmax, and the gradient is the relaxed sample's: y_hard − sg(y_soft) + y_soft."""
    vq = linear_vq(gumbel_sample="hard").train()
    vq.anneal(0, 10)
    z = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    embed = vq.codebook.detach().clone()
    torch.manual_seed(5)
    out = vq(z)
    out.quantized.square().sum().backward()

    zz = z.detach().clone().requires_grad_(True)
    logits = F.conv2d(zz, vq.logit_proj.weight.detach()[:, :, None, None],
                      vq.logit_proj.bias.detach())
    b, k, h, w = logits.shape
    torch.manual_seed(5)
    gumbels = -torch.empty(b * h * w, k).exponential_().log().reshape(b, h, w, k).permute(0, 3, 1, 2)
    y_soft = F.softmax((logits + gumbels) / vq.temperature, dim=1)
    y_hard = F.one_hot(y_soft.argmax(1), k).permute(0, 3, 1, 2).to(y_soft.dtype)
    z_q = torch.einsum("b n h w, n d -> b d h w", y_hard - y_soft.detach() + y_soft, embed)
    torch.testing.assert_close(out.quantized, embed[y_soft.argmax(1)].permute(0, 3, 1, 2))
    z_q.square().sum().backward()
    torch.testing.assert_close(z.grad, zz.grad, rtol=1e-4, atol=1e-6)
