"""The loss-level estimators (hessian, exact) and gumbel, against independent computations."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch.autograd.functional import hessian

from rvq_cli.models import build_conv_tokenizer, build_vit_tokenizer
from rvq_cli.quantize import ESTIMATORS, VectorQuantizer
from rvq_cli.quantize.estimators.gumbel import cosine_anneal
from rvq_cli.quantize.estimators.hessian import hessian_gradient
from tiny import recipe_file


def estimator_loss(loss, out, quantizer, decoder_loss):
    return quantizer.estimator.training_loss(loss, out, quantizer, decoder_loss)


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def tiny_tokenizer(estimator, seed=0, **quantizer):
    torch.manual_seed(seed)
    return build_conv_tokenizer(ch=8, ch_mult=(1, 2), attn_resolutions=(8,), resolution=16, z_channels=4,
                                embed_dim=4, num_res_blocks=1, norm_groups=4,
                                quantizer=dict(codebook_size=16, estimator=estimator, **quantizer)).train()


def grads(module):
    return torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel()) for p in module.parameters()])


def encoder_side(model):
    return torch.nn.ModuleList([model.encoder, model.quant_conv])


def decoder_side(model):
    return torch.nn.ModuleList([model.post_quant_conv, model.decoder])


def mse(x):
    return lambda rec: F.mse_loss(rec, x)


# ---------------------------------------------------------------- hessian


def test_hessian_gradient_is_g_plus_hessian_times_offset():
    """Against the full Hessian of a small non-linear loss, formed explicitly."""
    w1, w2, target = rand(3, 5, seed=1), rand(5, 2, seed=2), rand(4, 2, seed=3)

    def loss_of(q):  # a tiny 'decoder' and loss on q (4, 3)
        return (torch.tanh(q @ w1) @ w2 - target).pow(2).sum()

    q = rand(4, 3, seed=4).requires_grad_(True)
    e = q.detach() + 0.1 * rand(4, 3, seed=5)
    grad_e, g = hessian_gradient(loss_of(q), q, e)
    h = hessian(loss_of, q.detach()).reshape(12, 12)
    g_ref = torch.func.grad(loss_of)(q.detach())
    expected = g_ref + (h @ (e - q.detach()).reshape(12)).reshape(4, 3)
    torch.testing.assert_close(g, g_ref)
    torch.testing.assert_close(grad_e, expected, rtol=1e-5, atol=1e-6)


def test_hessian_gradient_is_exact_for_a_quadratic_loss():
    """§A.3: where the loss is quadratic in q the second-order step lands on the true ∂L/∂e."""
    a, b = rand(3, 3, seed=6), rand(5, 3, seed=7)

    def loss_of(x):
        return ((x @ a) - b).pow(2).sum()

    q = rand(5, 3, seed=8).requires_grad_(True)
    e = rand(5, 3, seed=9)
    grad_e, _ = hessian_gradient(loss_of(q), q, e)
    torch.testing.assert_close(grad_e, torch.func.grad(loss_of)(e), rtol=1e-5, atol=1e-5)


def test_hessian_of_a_linear_loss_is_g():
    q = rand(4, 3, seed=10).requires_grad_(True)
    w = rand(4, 3, seed=11)
    grad_e, g = hessian_gradient((q * w).sum(), q, q.detach() + 1.0)
    assert torch.equal(grad_e, w) and torch.equal(g, w)


def test_hessian_in_a_tokenizer_sends_its_gradient_to_the_latents():
    """The encoder side receives J_eᵀ (g + H(e − q)), the decoder side ∂L_q/∂θ untouched."""
    model = tiny_tokenizer("hessian", beta=0.0)
    reference = copy.deepcopy(model)
    x = rand(2, 3, 16, 16, seed=12).clamp(-1, 1)
    out = model(x)
    loss = F.mse_loss(out.reconstruction, x) + out.quantize.loss
    grad_e, g = hessian_gradient(loss, out.quantize.decoder_input, out.quantize.latents)
    estimator_loss(loss, out, model.quantize, mse(x)).backward()

    # independent: the encoder's parameters get the vector-Jacobian product of grad_e with e
    latents = reference.encode_latents(x)  # (B, 4, 8, 8); code space = latent space here
    e_rows = latents.movedim(1, -1).reshape(-1, 4)
    enc_ref = torch.autograd.grad(e_rows, list(encoder_side(reference).parameters()), grad_outputs=grad_e)
    torch.testing.assert_close(grads(encoder_side(model)), torch.cat([t.flatten() for t in enc_ref]))
    # the decoder gets the ordinary VQ gradient (the same as with STE)
    ste = copy.deepcopy(reference)
    ste.quantize.estimator = VectorQuantizer(4, 16, "ste").estimator
    out_s = ste(x)
    (F.mse_loss(out_s.reconstruction, x) + out_s.quantize.loss).backward()
    torch.testing.assert_close(grads(decoder_side(model)), grads(decoder_side(ste)))
    # and the logged cosine is the one between grad_e and g
    assert model.quantize.gradient_cosine() == pytest.approx(
        float(F.cosine_similarity(grad_e, g, dim=-1).mean()), rel=1e-5)


def test_hessian_through_attention_needs_the_math_kernel():
    model = build_vit_tokenizer(image_size=16, patch_size=4, dim=16, depth=1, heads=2, mlp_dim=32, z_channels=16,
                                embed_dim=4, quantizer=dict(codebook_size=16, estimator="hessian")).train()
    x = rand(2, 3, 16, 16, seed=13).clamp(-1, 1)
    with ESTIMATORS["hessian"].forward_context():
        out = model(x)
        loss = F.mse_loss(out.reconstruction, x) + out.quantize.loss
        estimator_loss(loss, out, model.quantize, mse(x)).backward()
    assert torch.isfinite(grads(encoder_side(model))).all() and grads(encoder_side(model)).abs().sum() > 0


# ---------------------------------------------------------------- exact


def test_exact_encoder_gets_the_autoencoder_gradient_and_the_decoder_the_vq_one():
    model = tiny_tokenizer("exact", beta=0.0)
    ae, vq = copy.deepcopy(model), copy.deepcopy(model)
    x = rand(2, 3, 16, 16, seed=14).clamp(-1, 1)

    out = model(x)
    loss = F.mse_loss(out.reconstruction, x) + out.quantize.loss
    estimator_loss(loss, out, model.quantize, mse(x)).backward()

    # plain autoencoder: decode the latents themselves
    F.mse_loss(ae.decode_codes(ae.encode_latents(x)), x).backward()
    torch.testing.assert_close(grads(encoder_side(model)), grads(encoder_side(ae)), rtol=1e-4, atol=1e-7)

    # VQ: the same model with STE; decoder gradients do not depend on the estimator
    vq.quantize.estimator = VectorQuantizer(4, 16, "ste").estimator
    out_v = vq(x)
    (F.mse_loss(out_v.reconstruction, x) + out_v.quantize.loss).backward()
    dec, dec_vq, dec_ae = grads(decoder_side(model)), grads(decoder_side(vq)), grads(decoder_side(ae))
    torch.testing.assert_close(dec, dec_vq + model.quantize.epsilon * dec_ae, rtol=1e-5, atol=1e-8)
    assert (dec - dec_vq).abs().max() <= 1e-5 * dec_vq.abs().max()
    cos = model.quantize.gradient_cosine()  # the encoder's gradient is the autoencoder's, not the decoder's g
    assert cos is not None and -1.0 <= cos < 0.99, cos  # (STE: 1)
    assert model.quantize.gradient_cosine() is None  # read once: nothing since


def test_exact_reconstruction_is_the_quantized_one_and_eval_is_hard():
    model = tiny_tokenizer("exact")
    x = rand(2, 3, 16, 16, seed=15).clamp(-1, 1)
    out = model(x)
    assert out.reconstruction_e is not None and out.reconstruction_e.requires_grad
    with torch.no_grad():  # the latents themselves decoded, as a plain autoencoder
        torch.testing.assert_close(out.reconstruction_e, model.decode_codes(model.encode_latents(x)), rtol=1e-6,
                                   atol=1e-6)
    assert not torch.equal(out.reconstruction, out.reconstruction_e)  # the second pass skips quantization
    model.eval()
    with torch.no_grad():
        ev = model(x)
    assert ev.reconstruction_e is None and ev.quantize.decoder_input is None
    torch.testing.assert_close(ev.reconstruction, model.decode_indices(ev.indices), rtol=0, atol=0)


# ---------------------------------------------------------------- gumbel


def test_gumbel_training_output_is_the_soft_mixture_of_codes():
    vq = VectorQuantizer(4, 16, "gumbel", beta=0.0).train()
    vq.anneal(5, 10)
    z = rand(2, 4, 3, 3, seed=16).requires_grad_(True)
    codes = vq.codebook.clone()  # the codes before the EMA update
    torch.manual_seed(7)
    out = vq(z)
    e = z.detach().movedim(1, -1).reshape(-1, 4)
    logits = -torch.cdist(e, codes).pow(2)
    torch.manual_seed(7)
    soft = F.gumbel_softmax(logits, tau=cosine_anneal(1.0, 1 / 16, 0.5), hard=False)
    expected = (soft @ codes).reshape(2, 3, 3, 4).movedim(-1, 1)
    torch.testing.assert_close(out.quantized, expected, rtol=1e-4, atol=1e-5)
    assert torch.equal(out.indices.flatten(), logits.argmax(-1))  # the index is the nearest code
    out.quantized.square().sum().backward()  # the mixture carries gradient to the input
    assert z.grad.abs().sum() > 0
    assert float(out.losses.prior.detach()) > 0


def test_gumbel_is_hard_at_eval_and_anneals_from_1_to_1_16():
    vq = VectorQuantizer(4, 16, "gumbel").eval()
    z = rand(2, 4, 3, 3, seed=17)
    out = vq(z)
    assert torch.equal(out.quantized, vq.indices_to_codes(out.indices))
    temps = [cosine_anneal(1.0, 1 / 16, p / 10) for p in range(11)]
    assert temps[0] == 1.0 and temps[-1] == pytest.approx(1 / 16)
    assert all(a > b for a, b in zip(temps, temps[1:]))
    vq.anneal(10, 10)
    assert vq.temperature == pytest.approx(1 / 16)
    assert math.isclose(cosine_anneal(1.0, 1 / 16, 5.0), 1 / 16)  # clamped past the end


def test_gumbel_temperature_sharpens_the_mixture():
    """Near zero temperature every row is one code (the Gumbel-max sample); at 1 it is a blend.
    With latents large against the noise the sample is the nearest code."""
    vq = VectorQuantizer(4, 16, "gumbel", update="learned").train()
    codes = vq.codebook.detach().clone()
    z = rand(2, 4, 3, 3, seed=18) * 0.3

    def distance_to_nearest_code(quantized):
        rows = quantized.detach().movedim(1, -1).reshape(-1, 4)
        return torch.cdist(rows, codes).amin(-1)

    vq.temperature = 1.0
    assert distance_to_nearest_code(vq(z.clone().requires_grad_(True)).quantized).min() > 1e-3
    vq.temperature = 1e-4
    out = vq(z.clone().requires_grad_(True))
    assert distance_to_nearest_code(out.quantized).max() < 1e-5
    rows = out.quantized.detach().movedim(1, -1).reshape(-1, 4)
    counts = torch.bincount(torch.cdist(rows, codes).argmin(-1), minlength=16).float()  # the sampled codes
    out.quantized.sum().backward()
    # a learned codebook is trained through the mixture as well: d Σ(y @ C) / dC_k = (rows that sampled k) · 1
    torch.testing.assert_close(vq.codebook.grad, counts[:, None].expand(16, 4), rtol=0, atol=1e-4)

    far = VectorQuantizer(4, 16, "gumbel", init="normal").train()  # codes ~N(0, 1): distances ≫ noise
    far.temperature = 1e-4
    before = copy.deepcopy(far).eval()  # the codes at lookup time (the EMA update follows)
    z = rand(2, 4, 8, 8, seed=19) * 3
    out = far(z.requires_grad_(True))
    nearest = before.indices_to_codes(out.indices)
    agree = (out.quantized - nearest).abs().amax(dim=1) < 1e-4
    assert agree.float().mean() > 0.8


# ---------------------------------------------------------------- in the trainer


@pytest.mark.parametrize("estimator", ["hessian", "exact", "gumbel"])
def test_estimator_trains_a_vqgan_past_the_discriminator_start(tmp_path, shards, vgg_file, estimator):
    """The whole objective (LPIPS, PatchGAN, adaptive weight) through each estimator, and the
    checkpoint evaluates and decodes like any other."""
    import json

    from test_gan import GAN

    from rvq_cli.config import load_recipe
    from rvq_cli.runs import load_tokenizer
    from rvq_cli.training import train

    over = GAN + [f"model.quantizer.estimator={estimator}", "loss.gan.start=1", "train.steps=3",
                  "loss.perceptual_weight=0.1", f"loss.perceptual_weights={vgg_file}"]
    res = train(load_recipe(recipe_file(tmp_path, shards), over), quiet=True)
    rows = [json.loads(line) for line in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[-1]["d_loss"] > 0 and rows[-1]["adaptive_weight"] > 0
    assert all(math.isfinite(r["loss"]) and -1 <= r["grad_cos"] <= 1 for r in rows)
    assert all(r["grad_cos"] != 1.0 for r in rows)  # measured, not the no-backward default
    if estimator == "gumbel":
        assert rows[0]["temperature"] == 1.0 and rows[-1]["temperature"] < rows[0]["temperature"]
    tok = load_tokenizer(res.run_dir)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(tok.model.decode_indices(tok.model.encode(x)), tok.model(x).reconstruction)


def test_hessian_trains_a_vit(tmp_path, shards):
    from rvq_cli.config import load_recipe
    from rvq_cli.training import train

    vit = ["model.name=vit", "model.vit.patch_size=4", "model.vit.dim=32", "model.vit.depth=1", "model.vit.heads=4",
           "model.vit.mlp_dim=64", "model.quantizer.dim=8", "model.quantizer.lookup=cosine",
           "model.quantizer.estimator=hessian", "train.steps=2"]
    res = train(load_recipe(recipe_file(tmp_path, shards), vit), quiet=True)
    assert res.step == 2 and math.isfinite(res.last_metrics["loss"])
