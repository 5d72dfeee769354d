"""ViT-VQGAN encoder/decoder: shapes, the sin-cos position embedding, attention and block math,
gradients through the estimators, the bit-exact token round trip, the last layer, patch locality,
size and argument checks, and Table 10's parameter count."""

import os

os.environ.setdefault("RVQ_COMPILE", "never")

import math

import pytest
import torch
import torch.nn.functional as F

from rvq_cli.models import TokenizerOutput, ViTDecoder, ViTEncoder, build_vit_tokenizer
from rvq_cli.models.vit import WEIGHT_INITS, Attention, Block, sincos_2d
from rvq_cli.quantize import VectorQuantizer

ARCH = {"image_size": 16, "patch_size": 4, "dim": 32, "depth": 2, "heads": 4, "mlp_dim": 64, "z_channels": 16}
EMBED_DIM = 12


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def smooth_images(n=2, size=16, seed=0):
    low = rand(n, 3, size // 4, size // 4, seed=seed)
    return torch.tanh(F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False))


def make(estimator="rotation", seed=0, arch=None, **quantizer):
    torch.manual_seed(seed)
    vq = VectorQuantizer(EMBED_DIM, 64, estimator=estimator, lookup="cosine", codebook_dim=8, **quantizer)
    return build_vit_tokenizer(embed_dim=EMBED_DIM, quantizer=vq, **(arch or ARCH))


def n_params(module):
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------- shapes


def test_shapes():
    enc = ViTEncoder(in_channels=3, **ARCH).eval()
    dec = ViTDecoder(out_channels=2, **ARCH).eval()
    assert enc.downsample_factor == dec.downsample_factor == 4
    assert enc.in_channels == 3 and enc.z_channels == dec.z_channels == 16
    z = enc(rand(2, 3, 16, 16))
    assert z.shape == (2, 16, 4, 4)
    assert dec(z).shape == (2, 2, 16, 16)

    tok = make().eval()
    assert tok.latent_shape(16) == (4, 4)
    x = rand(2, 3, 16, 16)
    out = tok(x)
    assert isinstance(out, TokenizerOutput)
    assert out.reconstruction.shape == x.shape
    assert out.quantize.quantized.shape == (2, EMBED_DIM, 4, 4)
    idx = tok.encode(x)
    assert idx.shape == (2, 4, 4) and idx.dtype == torch.int64
    assert torch.equal(idx, out.indices)


def test_non_square_images():
    tok = make(arch={**ARCH, "image_size": (8, 16)}).eval()
    x = rand(1, 3, 8, 16)
    assert tok.encoder(x).shape == (1, 16, 2, 4)
    assert tok(x).reconstruction.shape == x.shape
    assert tok.latent_shape((8, 16)) == (2, 4)


def test_projections_only_when_z_channels_differ_from_dim():
    enc = ViTEncoder(in_channels=3, **{**ARCH, "z_channels": 32})
    dec = ViTDecoder(out_channels=3, **{**ARCH, "z_channels": 32})
    assert isinstance(enc.proj_out, torch.nn.Identity) and isinstance(dec.proj_in, torch.nn.Identity)
    enc = ViTEncoder(in_channels=3, **ARCH)
    dec = ViTDecoder(out_channels=3, **ARCH)
    assert enc.proj_out.weight.shape == (16, 32) and dec.proj_in.weight.shape == (32, 16)


# ---------------------------------------------------------------- position embedding and blocks


def test_sincos_position_embedding():
    pe = sincos_2d(8, 3, 5)
    assert pe.shape == (15, 8) and pe.dtype == torch.float32
    # position (0, 0): sin 0 = 0, cos 0 = 1 in both halves
    assert torch.equal(pe[0], torch.tensor([0.0, 0, 1, 1, 0, 0, 1, 1]))
    # row-major: token 7 is (i, j) = (1, 2); ω = (1, 1/100) for dim/4 = 2 frequencies
    i, j = 1.0, 2.0
    expected = [math.sin(i), math.sin(i / 100), math.cos(i), math.cos(i / 100),
                math.sin(j), math.sin(j / 100), math.cos(j), math.cos(j / 100)]
    torch.testing.assert_close(pe[7], torch.tensor(expected))
    assert len({tuple(r.tolist()) for r in pe}) == 15  # every position distinct
    # fixed, not learned, and not in the state dict (recomputed from the arguments)
    enc = ViTEncoder(in_channels=3, **ARCH)
    assert torch.equal(enc.pos_embed, sincos_2d(32, 4, 4))
    assert all("pos_embed" not in name for name, _ in enc.named_parameters())
    assert "pos_embed" not in enc.state_dict()


def test_attention_matches_explicit_softmax():
    torch.manual_seed(0)
    attn = Attention(16, heads=4)
    x = rand(2, 5, 16)
    q, k, v = attn.qkv(x).chunk(3, dim=-1)  # (B, N, D) each
    q, k, v = (t.reshape(2, 5, 4, 4).transpose(1, 2) for t in (q, k, v))  # (B, heads, N, D/heads)
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(4), dim=-1)  # (B, heads, N, N)
    out = (w @ v).transpose(1, 2).reshape(2, 5, 16)  # (B, N, D)
    torch.testing.assert_close(attn(x), attn.proj(out), rtol=1e-5, atol=1e-5)
    assert attn.qkv.bias is None


def test_block_is_pre_ln_residual():
    torch.manual_seed(0)
    blk = Block(16, 4, 32)
    assert isinstance(blk.mlp[1], torch.nn.Tanh)
    assert isinstance(Block(16, 4, 32, activation="gelu").mlp[1], torch.nn.GELU)
    x = rand(2, 5, 16)
    h = x + blk.attn(blk.norm1(x))
    torch.testing.assert_close(blk(x), h + blk.mlp(blk.norm2(h)))
    with torch.no_grad():  # both residual branches silenced: the block is the identity
        for lin in (blk.attn.proj, blk.mlp[3]):
            lin.weight.zero_()
            lin.bias.zero_()
    assert torch.equal(blk(x), x)


def test_init():
    enc = ViTEncoder(in_channels=3, **{**ARCH, "dim": 64, "mlp_dim": 256})
    w = enc.blocks[0].mlp[0].weight
    assert w.abs().max() <= 0.04 and 0.015 < w.std() < 0.025  # N(0, 0.02²) truncated at ±2σ
    assert torch.equal(enc.blocks[0].mlp[0].bias, torch.zeros(256))
    assert torch.equal(enc.norm.weight, torch.ones(64)) and torch.equal(enc.norm.bias, torch.zeros(64))
    assert enc.patch_embed.weight.abs().max() <= 0.04


def test_trunc_normal_is_the_default_init():
    """model.vit.init: trunc_normal is what a ViT built without the key gets, weight for weight."""
    assert WEIGHT_INITS == ("trunc_normal", "xavier")
    for cls, io in ((ViTEncoder, "in_channels"), (ViTDecoder, "out_channels")):
        torch.manual_seed(3)
        default = cls(**{io: 3}, **ARCH).state_dict()
        torch.manual_seed(3)
        named = cls(**{io: 3}, init="trunc_normal", **ARCH).state_dict()
        assert list(default) == list(named) and all(torch.equal(default[k], named[k]) for k in default)


def _check_xavier(w, fan_in, fan_out):
    """w ~ U(±a), a = √(6 / (fan_in + fan_out)): inside the bound, reaching it, std a/√3."""
    a = math.sqrt(6 / (fan_in + fan_out))
    assert w.abs().max() <= a and w.abs().max() > 0.95 * a
    assert abs(w.std() - a / math.sqrt(3)) < 0.05 * a / math.sqrt(3)


@pytest.mark.parametrize("part", ["encoder", "decoder"])
def test_xavier_init_is_enhancing_transformers(part):
    """model.vit.init: xavier, enhancing-transformers' init_weights (Table 4): Linear weights
    xavier-uniform, biases 0; the conv weight xavier-uniform as the matrix (shape[0], rest), whose
    bound √(6 / (64 + 3·4·4)) is 3× the one of the 4-D tensor for the decoder's transposed conv;
    conv biases keep PyTorch's U(±1/√fan_in); LayerNorm 1 / 0."""
    arch = {**ARCH, "dim": 64, "mlp_dim": 256, "z_channels": 32}
    torch.manual_seed(0)
    m = ViTEncoder(in_channels=3, init="xavier", **arch) if part == "encoder" else \
        ViTDecoder(out_channels=3, init="xavier", **arch)
    blk = m.blocks[0]
    for lin, fan_in, fan_out in ((blk.attn.qkv, 64, 192), (blk.attn.proj, 64, 64), (blk.mlp[0], 64, 256),
                                 (blk.mlp[3], 256, 64)):
        _check_xavier(lin.weight, fan_in, fan_out)
        assert lin.bias is None or torch.equal(lin.bias, torch.zeros_like(lin.bias))
    proj = m.proj_out if part == "encoder" else m.proj_in
    _check_xavier(proj.weight, *proj.weight.shape[::-1])
    conv = m.patch_embed if part == "encoder" else m.conv_out
    w = conv.weight  # Conv2d (64, 3, 4, 4); ConvTranspose2d (64, 3, 4, 4) = (in, out, k, k)
    _check_xavier(w.flatten(1), fan_in=w[0].numel(), fan_out=w.shape[0])
    assert conv.bias.abs().min() > 0 and conv.bias.abs().max() <= 1 / math.sqrt(3 * 4 * 4)  # PyTorch's draw
    assert torch.equal(m.norm.weight, torch.ones(64)) and torch.equal(m.norm.bias, torch.zeros(64))
    assert torch.equal(blk.norm1.weight, torch.ones(64)) and torch.equal(blk.norm1.bias, torch.zeros(64))


def test_the_recipe_key_reaches_the_model():
    from rvq_cli.config import ModelConfig
    from rvq_cli.models import build_tokenizer

    model = ModelConfig(name="vit", vit={"patch_size": 4, "dim": 64, "depth": 1, "heads": 4, "mlp_dim": 256,
                                         "init": "xavier"}, quantizer={"dim": 8, "codebook_size": 16})
    tok = build_tokenizer(model, image_size=16)
    _check_xavier(tok.encoder.blocks[0].mlp[0].weight, 64, 256)
    _check_xavier(tok.decoder.blocks[0].mlp[0].weight, 64, 256)


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("estimator", ["ste", "rotation", "diveq", "ibq"])
def test_training_step_gradients(estimator):
    tok = make(estimator, seed=1).train()
    x = smooth_images(2, seed=2)
    out = tok(x)
    (F.mse_loss(out.reconstruction, x) + out.quantize.loss).backward()
    for name, p in tok.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    for p in (tok.encoder.patch_embed.weight, tok.encoder.blocks[0].attn.qkv.weight, tok.encoder.proj_out.weight,
              tok.quant_conv.weight, tok.quantize.project_in.weight, tok.quantize.project_out.weight,
              tok.post_quant_conv.weight, tok.decoder.proj_in.weight, tok.decoder.blocks[-1].mlp[0].weight,
              tok.decoder.conv_out.weight):
        assert p.grad.abs().sum() > 0


def _reconstruction_grads(estimator):
    tok = make(estimator, seed=3).train()
    x = smooth_images(2, seed=4)
    F.mse_loss(tok(x).reconstruction, x).backward()  # no commitment loss: the encoder's only path is the estimator
    return tok


def test_gradients_reach_the_encoder_through_the_estimator():
    ste, rot = _reconstruction_grads("ste"), _reconstruction_grads("rotation")
    for tok in (ste, rot):
        assert tok.encoder.patch_embed.weight.grad.abs().sum() > 0
        assert tok.quantize.project_in.weight.grad.abs().sum() > 0
    # same weights, same forward values: decoder gradients agree bit for bit ...
    for (name, a), b in zip(ste.named_parameters(), rot.parameters()):
        if name.startswith(("decoder.", "post_quant_conv.", "quantize.project_out")):
            assert torch.equal(a.grad, b.grad), name
    # ... and the encoder's differ: what reaches it is the estimator's
    for name in ("encoder.patch_embed.weight", "quant_conv.weight", "quantize.project_in.weight"):
        a, b = ste.get_parameter(name).grad, rot.get_parameter(name).grad
        assert not torch.allclose(a, b, rtol=1e-3, atol=0), name


# ---------------------------------------------------------------- tokens


@pytest.mark.parametrize("update", ["ema", "learned"])
def test_decode_indices_is_bit_exact(update):
    tok = make(seed=5, update=update).train()
    x = smooth_images(3, seed=6)
    opt = torch.optim.Adam(tok.parameters(), lr=1e-3)
    for _ in range(2):  # move the weights and codebook off their initial values
        out = tok(x)
        opt.zero_grad()
        (F.mse_loss(out.reconstruction, x) + out.quantize.loss).backward()
        opt.step()
    tok.eval()
    x = rand(3, 3, 16, 16, seed=7)
    out = tok(x)
    idx = tok.encode(x)
    assert torch.equal(idx, out.indices)
    assert torch.equal(tok.decode_indices(idx), out.reconstruction)


def test_last_layer_is_the_pixel_projection():
    tok = make().eval()
    assert tok.last_layer is tok.decoder.conv_out.weight
    assert tok.last_layer.shape == (32, 3, 4, 4)  # (dim, C, p, p)
    x = smooth_images(1)
    out = tok(x).reconstruction
    (g,) = torch.autograd.grad(out.square().sum(), tok.last_layer)  # what the adaptive GAN weight needs
    assert g.abs().sum() > 0
    idx = tok.encode(x)
    with torch.no_grad():
        tok.last_layer.add_(0.01)
        assert not torch.equal(tok.decode_indices(idx), out)


# ---------------------------------------------------------------- locality


def _one_patch_changed(x, i, j, p=4):
    y = x.clone()
    y[:, :, i * p:(i + 1) * p, j * p:(j + 1) * p] += 1.0
    return y


def test_without_attention_patches_stay_local():
    enc = ViTEncoder(in_channels=3, **{**ARCH, "depth": 0}).eval()
    x = rand(1, 3, 16, 16)
    diff = (enc(_one_patch_changed(x, 1, 2)) - enc(x)).abs().sum(1)[0]  # (h, w)
    assert diff[1, 2] > 0
    diff[1, 2] = 0
    assert torch.equal(diff, torch.zeros(4, 4))

    dec = ViTDecoder(out_channels=3, **{**ARCH, "depth": 0}).eval()
    z = rand(1, 16, 4, 4)
    z2 = z.clone()
    z2[:, :, 3, 0] += 1.0
    diff = (dec(z2) - dec(z)).abs().sum(1)[0]  # (H, W)
    assert diff[12:16, 0:4].sum() > 0
    diff[12:16, 0:4] = 0
    assert torch.equal(diff, torch.zeros(16, 16))


def test_with_attention_changes_propagate():
    enc = ViTEncoder(in_channels=3, **ARCH).eval()
    x = rand(1, 3, 16, 16)
    diff = (enc(_one_patch_changed(x, 1, 2)) - enc(x)).abs().sum(1)[0]
    assert (diff > 0).all()


def test_dropout_only_in_training():
    enc = ViTEncoder(in_channels=3, **ARCH, dropout=0.5)
    x = rand(1, 3, 16, 16)
    enc.eval()
    assert torch.equal(enc(x), enc(x))
    enc.train()
    torch.manual_seed(0)
    assert not torch.equal(enc(x), enc(x))


# ---------------------------------------------------------------- checks


def test_other_sizes_raise():
    tok = make().eval()
    with pytest.raises(ValueError, match=r"built for 16×16 images \(a fixed 4×4 grid of 4-pixel patches"):
        tok(rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="got 20×20 images"):
        tok.encoder(rand(1, 3, 20, 20))
    with pytest.raises(ValueError, match="got a 8×8 feature grid"):
        tok.decoder(rand(1, 16, 8, 8))
    with pytest.raises(ValueError, match=r"expected images \(B, 3, H, W\)"):
        tok.encoder(rand(1, 1, 16, 16))
    with pytest.raises(ValueError, match=r"expected features \(B, 16, h, w\)"):
        tok.decoder(rand(1, 8, 4, 4))


@pytest.mark.parametrize("change, match", [
    ({"heads": 5}, r"dim \(32\) must be divisible by heads \(5\)"),
    ({"dim": 30, "heads": 3}, "divisible by 4"),
    ({"patch_size": 5}, "must be divisible by patch_size"),
    ({"image_size": (16, 16, 3)}, "positive int or"),
    ({"depth": -1}, "depth must be a non-negative integer"),
    ({"mlp_dim": 0}, "mlp_dim must be a positive integer"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ({"activation": "relu"}, "unknown activation 'relu'; valid: tanh, gelu"),
    ({"in_channels": 0}, "in_channels must be a positive integer"),
    ({"out_channels": 0}, "out_channels must be a positive integer"),
    ({"init": "kaiming"}, "unknown init 'kaiming'; valid: trunc_normal, xavier"),
])
def test_bad_arguments(change, match):
    with pytest.raises(ValueError, match=match):
        build_vit_tokenizer(embed_dim=8, quantizer={"codebook_size": 16}, **{**ARCH, **change})


def test_build_with_quantizer_arguments():
    tok = build_vit_tokenizer(embed_dim=8, quantizer={"codebook_size": 16, "estimator": "ste"}, in_channels=1,
                              out_channels=2, **ARCH)
    assert tok.quantize.dim == 8 and tok.quantize.estimator.name == "ste"
    assert tok(rand(1, 1, 16, 16)).reconstruction.shape == (1, 2, 16, 16)
    with pytest.raises(ValueError, match="leave 'dim' out"):
        build_vit_tokenizer(embed_dim=8, quantizer={"dim": 8, "codebook_size": 16}, **ARCH)
    with pytest.raises(TypeError, match="VectorQuantizer or a mapping"):
        build_vit_tokenizer(embed_dim=8, quantizer=16, **ARCH)


# ---------------------------------------------------------------- the paper's model


@pytest.mark.parametrize("mlp_dim, per_part", [(1024, 16.9e6), (2048, 25.3e6)])
def test_table10_parameter_count(mlp_dim, per_part):
    """Table 10's ViT-VQGAN small (256 px, patch 8, dim 512, depth 8, heads 8, MLP 1024; the
    repository's config says 2048), built on the meta device: ≈16.9M parameters each for encoder
    and decoder (≈25.3M with MLP 2048), 33.8M together, plus 33k for the 512 <-> 32 maps."""
    cfg = {"image_size": 256, "patch_size": 8, "dim": 512, "depth": 8, "heads": 8, "mlp_dim": mlp_dim,
           "z_channels": 512}
    with torch.device("meta"):
        enc, dec = ViTEncoder(in_channels=3, **cfg), ViTDecoder(out_channels=3, **cfg)
    d, m, c, p = 512, mlp_dim, 3, 8
    block = 2 * (2 * d) + d * 3 * d + (d * d + d) + (d * m + m) + (m * d + d)  # 2 LN, qkv (no bias), proj, MLP
    assert block == {1024: 2_101_248, 2048: 3_150_848}[mlp_dim]
    assert n_params(enc) == (c * p * p * d + d) + 8 * block + 2 * d  # patch embed, blocks, LayerNorm
    assert n_params(dec) == 8 * block + 2 * d + (d * c * p * p + c)  # blocks, LayerNorm, conv_out
    assert abs(n_params(enc) - per_part) < 0.05e6 and abs(n_params(dec) - per_part) < 0.05e6
    assert enc.grid == (32, 32)  # 1024 tokens of 32-dim codes after quant_conv
