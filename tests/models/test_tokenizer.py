"""VQTokenizer: token shapes, the bit-exact decode_indices(encode(x)) == forward(x).reconstruction
round trip, side-effect-free encoding, gradients through the estimators, a short training run,
state_dict round trip, and argument checks."""

import os

os.environ.setdefault("RVQ_COMPILE", "never")

import pytest
import torch
import torch.nn.functional as F

from rvq_cli.models import Decoder, Encoder, TokenizerOutput, VQTokenizer, build_conv_tokenizer
from rvq_cli.quantize import VectorQuantizer

ARCH = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), resolution=16, z_channels=8,
            norm_groups=4)


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def smooth_images(n=4, size=16, seed=0):
    """Low-frequency images in [-1, 1]: something a tiny autoencoder can learn in a few steps."""
    low = rand(n, 3, size // 4, size // 4, seed=seed)
    return torch.tanh(F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False))


def make(seed=0, embed_dim=4, arch=None, **quantizer):
    torch.manual_seed(seed)
    quantizer = {"codebook_size": 32, **quantizer}
    return build_conv_tokenizer(embed_dim=embed_dim, quantizer=quantizer, **(arch or ARCH))


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize("ch_mult, f", [((1,), 1), ((1, 2), 2), ((1, 2, 2), 4), ((1, 1, 2, 2), 8)])
def test_shapes(ch_mult, f):
    tok = make(arch={**ARCH, "ch_mult": ch_mult, "attn_resolutions": (), "resolution": 32}).eval()
    assert tok.downsample_factor == f
    assert tok.latent_shape(32) == (32 // f, 32 // f)
    assert tok.latent_shape((16, 32)) == (16 // f, 32 // f)
    x = rand(2, 3, 16, 32)
    out = tok(x)
    assert isinstance(out, TokenizerOutput)
    assert out.reconstruction.shape == x.shape
    assert out.quantize.quantized.shape == (2, 4, 16 // f, 32 // f)
    idx = tok.encode(x)
    assert idx.shape == (2, 16 // f, 32 // f) and idx.dtype == torch.int64
    assert torch.equal(idx, out.indices)
    assert out.quantize.loss.dim() == 0


# ---------------------------------------------------------------- bit-exact round trip


@pytest.mark.parametrize("lookup", ["euclidean", "cosine"])
@pytest.mark.parametrize("codebook_dim", [None, 2])
@pytest.mark.parametrize("update", ["ema", "learned"])
def test_decode_indices_is_bit_exact(lookup, codebook_dim, update):
    tok = make(lookup=lookup, codebook_dim=codebook_dim, update=update)
    x = smooth_images(3, seed=1)
    tok.train()
    opt = torch.optim.Adam(tok.parameters(), lr=1e-3)
    for _ in range(2):  # move the codebook and the weights away from their initial values
        out = tok(x)
        loss = F.mse_loss(out.reconstruction, x) + out.quantize.loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    tok.eval()
    x = rand(3, 3, 16, 16, seed=2)
    out = tok(x)  # with autograd recording, as in a validation step
    idx = tok.encode(x)
    assert torch.equal(idx, out.indices)
    assert torch.equal(tok.decode_indices(idx), out.reconstruction)
    with torch.no_grad():
        assert torch.equal(tok.decode_indices(idx), tok(x).reconstruction)


def test_decode_indices_is_bit_exact_in_bfloat16():
    """Under bf16 autocast, and with the model cast to bf16, tokens decode to the same bits."""
    x = smooth_images(2)
    tok = make().eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = tok(x)
        idx = tok.encode(x)
        assert out.reconstruction.dtype == torch.bfloat16
        assert torch.equal(idx, out.indices)
        assert torch.equal(tok.decode_indices(idx), out.reconstruction)
    tok = tok.to(torch.bfloat16)
    out = tok(x.bfloat16())
    assert torch.equal(tok.decode_indices(tok.encode(x.bfloat16())), out.reconstruction)


def test_decode_indices_of_any_tokens():
    tok = make().eval()
    idx = torch.randint(0, 32, (2, 8, 8), generator=torch.Generator().manual_seed(0))
    assert tok.decode_indices(idx).shape == (2, 3, 16, 16)
    assert torch.equal(tok.decode_indices(idx), tok.decode_codes(tok.quantize.indices_to_codes(idx)))


@pytest.mark.parametrize("update, init", [("ema", "kaiming_uniform"), ("learned", "normal"), ("ema", "kmeans")])
def test_encode_never_updates_the_codebook(update, init):
    tok = make(update=update, init=init).train()
    before = {k: v.clone() for k, v in tok.quantize.state_dict().items()}
    tok.encode(smooth_images())
    assert tok.training and tok.quantize.training  # the mode is restored
    for k, v in tok.quantize.state_dict().items():
        assert torch.equal(v, before[k]), k
    tok(smooth_images())  # whereas a training forward does update it
    assert any(not torch.equal(v, before[k]) for k, v in tok.quantize.state_dict().items())


# ---------------------------------------------------------------- gradients


def _grads(estimator):
    tok = make(seed=3, estimator=estimator).train()
    x = smooth_images(2, seed=4)
    F.mse_loss(tok(x).reconstruction, x).backward()
    return tok


def test_gradients_reach_the_encoder_through_the_estimator():
    ste, rot = _grads("ste"), _grads("rotation")
    for tok in (ste, rot):
        for name, p in tok.named_parameters():
            if name.startswith(("encoder.", "quant_conv.", "decoder.", "post_quant_conv.")):
                assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert tok.encoder.conv_in.weight.grad.abs().sum() > 0
        assert tok.quant_conv.weight.grad.abs().sum() > 0
    # same weights, same forward values: the decoder's gradients are identical, bit for bit ...
    for (name, a), b in zip(ste.named_parameters(), rot.parameters()):
        if name.startswith(("decoder.", "post_quant_conv.")):
            assert torch.equal(a.grad, b.grad), name
    # ... while the encoder's differ: the estimator is what reaches it
    assert not torch.allclose(ste.quant_conv.weight.grad, rot.quant_conv.weight.grad, rtol=1e-3, atol=0)
    assert not torch.allclose(ste.encoder.conv_in.weight.grad, rot.encoder.conv_in.weight.grad, rtol=1e-3, atol=0)


def _train_40_steps(tok) -> list[float]:
    """Reconstruction MSE of 40 Adam steps (lr 3e-3) on four smooth images."""
    x = smooth_images(4, seed=6)
    opt = torch.optim.Adam(tok.parameters(), lr=3e-3)
    mses = []
    for _ in range(40):
        out = tok(x)
        mse = F.mse_loss(out.reconstruction, x)
        opt.zero_grad()
        (mse + out.quantize.loss).backward()
        opt.step()
        mses.append(mse.item())
    return mses


@pytest.mark.parametrize("estimator", ["ste", "rotation", "diveq"])
def test_training_reduces_reconstruction_error(estimator):
    tok = make(seed=5, estimator=estimator, beta=0.25).train()
    mses = _train_40_steps(tok)
    start, end = mses[0], min(mses[-5:])
    assert end < 0.4 * start, (estimator, mses)  # ~0.375 -> ~0.09 in 40 steps


# ---------------------------------------------------------------- state and build


def test_state_dict_round_trip():
    a, b = make(seed=0).eval(), make(seed=1).eval()
    x = smooth_images()
    assert not torch.equal(a(x).reconstruction, b(x).reconstruction)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a(x).reconstruction, b(x).reconstruction)
    assert torch.equal(a.encode(x), b.encode(x))


def test_build_with_a_quantizer_instance():
    vq = VectorQuantizer(4, 16, estimator="ste", lookup="cosine")
    tok = build_conv_tokenizer(embed_dim=4, quantizer=vq, in_channels=1, out_channels=2, **ARCH)
    assert tok.quantize is vq and tok.in_channels == 1
    assert tok(rand(1, 1, 16, 16)).reconstruction.shape == (1, 2, 16, 16)
    assert tok.last_layer is tok.decoder.conv_out.weight


# ---------------------------------------------------------------- argument checks


def test_bad_build_arguments():
    with pytest.raises(ValueError, match=r"quantizer's input dim \(6\) must equal embed_dim \(4\)"):
        build_conv_tokenizer(embed_dim=4, quantizer=VectorQuantizer(6, 16), **ARCH)
    with pytest.raises(ValueError, match="leave 'dim' out"):
        build_conv_tokenizer(embed_dim=4, quantizer={"dim": 4, "codebook_size": 16}, **ARCH)
    with pytest.raises(TypeError, match="VectorQuantizer or a mapping"):
        build_conv_tokenizer(embed_dim=4, quantizer=16, **ARCH)
    with pytest.raises(ValueError, match="unknown estimator"):
        build_conv_tokenizer(embed_dim=4, quantizer={"codebook_size": 16, "estimator": "nope"}, **ARCH)
    with pytest.raises(ValueError, match="not divisible"):
        build_conv_tokenizer(embed_dim=4, quantizer={"codebook_size": 16}, **{**ARCH, "resolution": 15})


def test_mismatched_parts():
    kw = {k: v for k, v in ARCH.items() if k != "z_channels"}
    enc, dec = Encoder(z_channels=8, **kw), Decoder(z_channels=6, **kw)
    with pytest.raises(ValueError, match="decoder has z_channels=6, expected 8"):
        VQTokenizer(enc, dec, VectorQuantizer(4, 16), embed_dim=4, z_channels=8)
    dec = Decoder(z_channels=8, **{**kw, "ch_mult": (1, 2, 2)})
    with pytest.raises(ValueError, match="down-sampling factors differ: 2 vs 4"):
        VQTokenizer(enc, dec, VectorQuantizer(4, 16), embed_dim=4, z_channels=8)


def test_bad_inputs():
    tok = make(arch={**ARCH, "ch_mult": (1, 2, 2), "attn_resolutions": ()}).eval()
    with pytest.raises(ValueError, match="divisible by the down-sampling factor f = 4"):
        tok(rand(1, 3, 16, 18))
    with pytest.raises(ValueError, match="divisible by the down-sampling factor f = 4"):
        tok.latent_shape(30)
    with pytest.raises(ValueError, match=r"expected images \(B, 3, H, W\)"):
        tok.encode(rand(1, 1, 16, 16))
    with pytest.raises(ValueError, match=r"expected token indices \(B, h, w\)"):
        tok.decode_indices(torch.zeros(4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="out of range"):
        tok.decode_indices(torch.full((1, 4, 4), 32))
    with pytest.raises(ValueError, match="integer tensor"):
        tok.decode_indices(torch.zeros(1, 4, 4))


# ---------------------------------------------------------------- projections around the quantizer

SMALL = dict(ch=8, ch_mult=(1, 2), attn_resolutions=(), resolution=16, num_res_blocks=1, norm_groups=4)


def test_projection_none_feeds_the_encoder_output_to_the_quantizer():
    torch.manual_seed(0)
    tok = build_conv_tokenizer(**SMALL, z_channels=4, embed_dim=4, quantizer={"codebook_size": 16},
                               projection="none").eval()
    assert not any(n.startswith(("quant_conv", "post_quant_conv")) for n, _ in tok.named_parameters())
    x = smooth_images()
    assert torch.equal(tok.encode_latents(x), tok.encoder(x))
    out = tok(x)
    assert torch.equal(out.reconstruction, tok.decoder(out.quantize.quantized))
    assert torch.equal(tok.decode_indices(tok.encode(x)), out.reconstruction)
    with pytest.raises(ValueError, match="z_channels == embed_dim"):
        build_conv_tokenizer(**SMALL, z_channels=8, embed_dim=4, quantizer={"codebook_size": 16}, projection="none")
    with pytest.raises(ValueError, match="valid: conv, none, conv_layernorm"):
        build_conv_tokenizer(**SMALL, z_channels=4, embed_dim=4, quantizer={"codebook_size": 16}, projection="linear")


def test_projection_conv_layernorm_normalises_over_channels():
    torch.manual_seed(0)
    tok = build_conv_tokenizer(**SMALL, z_channels=8, embed_dim=4, quantizer={"codebook_size": 16, "lookup": "cosine"},
                               projection="conv_layernorm").eval()
    x = smooth_images()
    h = tok.quant_conv[0](tok.encoder(x))  # the 1×1 conv alone
    want = F.layer_norm(h.movedim(1, -1), (4,), eps=1e-5).movedim(-1, 1)  # LN weight 1, bias 0 at init
    torch.testing.assert_close(tok.encode_latents(x), want)
    assert torch.equal(tok.decode_indices(tok.encode(x)), tok(x).reconstruction)


def test_ibq_in_its_published_setting_reduces_reconstruction_error():
    """IBQ as upstream trains it: a learned codebook, commitment 1 and codebook β = 0.25. At this
    size (32 codes of dimension 4) its dot-product argmax settles on few codes: 0.376 -> 0.209 in
    40 steps, where STE reaches 0.153, so the bound is looser than the pointwise estimators'."""
    tok = make(seed=5, estimator="ibq", update="learned", vq_loss="taming_legacy", beta=0.25).train()
    mses = _train_40_steps(tok)
    assert min(mses[-5:]) < 0.7 * mses[0], mses
