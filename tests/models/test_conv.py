"""Esser et al. encoder/decoder: shapes for f = 1..8, attention placement and count, block math
(attention, asymmetric down-sampling, shortcuts), the paper's parameter counts, taming's
weight names, and argument checks."""

import os

os.environ.setdefault("RVQ_COMPILE", "never")

import math

import pytest
import torch
import torch.nn.functional as F

from rvq_cli.models import AttnBlock, Decoder, Downsample, Encoder, ResnetBlock, Upsample, level_resolutions

TINY = dict(ch=8, num_res_blocks=1, z_channels=4, norm_groups=4)


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def count(module, cls):
    return sum(isinstance(m, cls) for m in module.modules())


def n_params(module):
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize("ch_mult", [(1,), (1, 2), (1, 2, 2), (1, 1, 2, 2)])
@pytest.mark.parametrize("attn", [False, True])
def test_shapes(ch_mult, attn):
    res = 32
    f = 2 ** (len(ch_mult) - 1)
    attn_res = (res // f,) if attn else ()
    enc = Encoder(ch_mult=ch_mult, attn_resolutions=attn_res, resolution=res, in_channels=3, **TINY)
    dec = Decoder(ch_mult=ch_mult, attn_resolutions=attn_res, resolution=res, out_channels=2, **TINY)
    assert enc.downsample_factor == dec.downsample_factor == f
    x = rand(2, 3, res, res)
    z = enc(x)
    assert z.shape == (2, 4, res // f, res // f)
    assert dec(z).shape == (2, 2, res, res)


def test_non_square_and_other_sizes():
    """``resolution`` only places attention; other (and non-square) sizes divisible by f run."""
    enc = Encoder(ch_mult=(1, 2, 2), attn_resolutions=(8,), resolution=32, **TINY)
    dec = Decoder(ch_mult=(1, 2, 2), attn_resolutions=(8,), resolution=32, **TINY)
    z = enc(rand(1, 3, 16, 24))
    assert z.shape == (1, 4, 4, 6)
    assert dec(z).shape == (1, 3, 16, 24)


# ---------------------------------------------------------------- attention placement


@pytest.mark.parametrize("attn_res", [(), (32,), (8,), (16, 8), (32, 16, 8, 4)])
@pytest.mark.parametrize("num_res_blocks", [1, 2])
def test_attention_count(attn_res, num_res_blocks):
    ch_mult = (1, 1, 2, 2)  # levels at 32, 16, 8, 4
    kw = dict(ch=8, ch_mult=ch_mult, attn_resolutions=attn_res, resolution=32, z_channels=4, norm_groups=4,
              num_res_blocks=num_res_blocks)
    enc, dec = Encoder(**kw), Decoder(**kw)
    # one AttnBlock per ResNet block at the chosen levels, plus the middle block's one
    assert count(enc, AttnBlock) == num_res_blocks * len(attn_res) + 1
    assert count(dec, AttnBlock) == (num_res_blocks + 1) * len(attn_res) + 1
    sizes = level_resolutions(32, len(ch_mult))
    for i, size in enumerate(sizes):
        assert len(enc.down[i].attn) == (num_res_blocks if size in attn_res else 0)
        assert len(dec.up[i].attn) == (num_res_blocks + 1 if size in attn_res else 0)
    assert count(enc, ResnetBlock) == num_res_blocks * len(ch_mult) + 2
    assert count(dec, ResnetBlock) == (num_res_blocks + 1) * len(ch_mult) + 2
    assert count(enc, Downsample) == count(dec, Upsample) == len(ch_mult) - 1


def test_resampler_placement():
    enc = Encoder(ch_mult=(1, 2, 2), attn_resolutions=(), resolution=16, **TINY)
    dec = Decoder(ch_mult=(1, 2, 2), attn_resolutions=(), resolution=16, **TINY)
    assert [hasattr(lvl, "downsample") for lvl in enc.down] == [True, True, False]
    assert [hasattr(lvl, "upsample") for lvl in dec.up] == [False, True, True]  # up[0]: full resolution


# ---------------------------------------------------------------- blocks


def test_attn_block_matches_explicit_softmax():
    """SDPA path = softmax(qᵀk/√C) over key positions, written out with bmm."""
    torch.manual_seed(0)
    blk = AttnBlock(8, norm_groups=4)
    x = rand(2, 8, 5, 6)
    b, c, h, w = x.shape
    hn = blk.norm(x)
    q = blk.q(hn).reshape(b, c, h * w)  # (B, C, N)
    k = blk.k(hn).reshape(b, c, h * w)
    v = blk.v(hn).reshape(b, c, h * w)
    attn = torch.softmax(torch.bmm(q.transpose(1, 2), k) / math.sqrt(c), dim=2)  # (B, N_q, N_k)
    out = torch.bmm(v, attn.transpose(1, 2)).reshape(b, c, h, w)  # (B, C, N_q) -> (B, C, H, W)
    expected = x + blk.proj_out(out)
    torch.testing.assert_close(blk(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [8, 9])
def test_downsample_asymmetric_padding(size):
    torch.manual_seed(0)
    ds = Downsample(4)
    x = rand(1, 4, size, size)
    expected = F.conv2d(F.pad(x, (0, 1, 0, 1)), ds.conv.weight, ds.conv.bias, stride=2)
    y = ds(x)
    assert y.shape[-1] == size // 2
    torch.testing.assert_close(y, expected)


def test_upsample():
    torch.manual_seed(0)
    up = Upsample(4)
    x = rand(1, 4, 3, 5)
    expected = up.conv(x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))
    torch.testing.assert_close(up(x), expected)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_upsample_folded_conv_is_upsample_then_conv(layout):
    """The stride-2 transposed conv with the folded 4×4 kernel is the same function as nearest 2×
    up-sampling followed by the 3×3 conv, gradients included (float64, odd sizes, both layouts)."""
    torch.manual_seed(0)
    up = Upsample(6).double().to(memory_format=layout)
    x = rand(2, 6, 5, 7).double().contiguous(memory_format=layout).requires_grad_()
    g = rand(2, 6, 10, 14, seed=1).double()
    y = up(x)
    grads = torch.autograd.grad((y * g).sum(), (x, up.conv.weight, up.conv.bias))
    x2 = x.detach().clone().requires_grad_()
    y2 = up.conv(F.interpolate(x2, scale_factor=2.0, mode="nearest"))
    grads2 = torch.autograd.grad((y2 * g).sum(), (x2, up.conv.weight, up.conv.bias))
    torch.testing.assert_close(y, y2, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads, grads2):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_resnet_block_shortcuts():
    same = ResnetBlock(8, 8, norm_groups=4)
    assert not hasattr(same, "nin_shortcut") and not hasattr(same, "conv_shortcut")
    nin = ResnetBlock(8, 16, norm_groups=4)
    assert nin.nin_shortcut.kernel_size == (1, 1)
    conv = ResnetBlock(8, 16, norm_groups=4, conv_shortcut=True)
    assert conv.conv_shortcut.kernel_size == (3, 3)
    x = rand(2, 8, 6, 6)
    assert nin(x).shape == conv(x).shape == (2, 16, 6, 6)
    # the residual branch is exactly added to the input when channels match
    with torch.no_grad():
        same.conv2.weight.zero_()
        same.conv2.bias.zero_()
    assert torch.equal(same(x), x)


def test_dropout_only_in_training():
    enc = Encoder(ch_mult=(1, 2), attn_resolutions=(), resolution=16, dropout=0.5, **TINY)
    x = rand(1, 3, 16, 16)
    enc.eval()
    assert torch.equal(enc(x), enc(x))
    enc.train()
    torch.manual_seed(0)
    a = enc(x)
    assert not torch.equal(a, enc(x))


# ---------------------------------------------------------------- the paper's models


def test_vqgan_f4_parameter_counts():
    """latent-diffusion's VQ-f4 (ch 128, ch_mult (1, 2, 4), 2 res blocks, no attention but the
    middle block's, z_channels 3): ~55M parameters in encoder + decoder, built on the meta device."""
    cfg = dict(ch=128, ch_mult=(1, 2, 4), num_res_blocks=2, attn_resolutions=(), z_channels=3, resolution=256)
    with torch.device("meta"):
        enc, dec = Encoder(**cfg), Decoder(**cfg)
    n_enc, n_dec = n_params(enc), n_params(dec)
    assert 20e6 < n_enc < 25e6 and 30e6 < n_dec < 36e6, (n_enc, n_dec)
    assert n_dec > n_enc  # the decoder has one more ResNet block per level

    # Exact count from the layer list: conv(k, i, o) = k²·i·o + o, GroupNorm(c) = 2c.
    def conv(k, i, o):
        return k * k * i * o + o

    def res(i, o):
        return 2 * i + conv(3, i, o) + 2 * o + conv(3, o, o) + (conv(1, i, o) if i != o else 0)

    def attn(c):
        return 2 * c + 4 * conv(1, c, c)

    mid = 2 * res(512, 512) + attn(512)
    expected_enc = (conv(3, 3, 128) + 2 * res(128, 128) + conv(3, 128, 128) + res(128, 256) + res(256, 256)
                    + conv(3, 256, 256) + res(256, 512) + res(512, 512) + mid + 2 * 512 + conv(3, 512, 3))
    expected_dec = (conv(3, 3, 512) + mid + 3 * res(512, 512) + conv(3, 512, 512) + res(512, 256)
                    + 2 * res(256, 256) + conv(3, 256, 256) + res(256, 128) + 2 * res(128, 128)
                    + 2 * 128 + conv(3, 128, 3))
    assert (n_enc, n_dec) == (expected_enc, expected_dec)


def test_vqgan_f16_parameter_count():
    """Taming's f16 VQGAN (ch_mult (1, 1, 2, 2, 4), attention at 16², z_channels 256): ~72M."""
    cfg = dict(ch=128, ch_mult=(1, 1, 2, 2, 4), attn_resolutions=(16,), z_channels=256, resolution=256)
    with torch.device("meta"):
        total = n_params(Encoder(**cfg)) + n_params(Decoder(**cfg))
    assert 70e6 < total < 74e6, total


def test_taming_weight_names():
    """Submodule names are taming's, so its encoder/decoder state_dicts load as they are."""
    cfg = dict(ch=8, ch_mult=(1, 2), attn_resolutions=(8,), resolution=16, z_channels=4, norm_groups=4)
    enc_keys, dec_keys = set(Encoder(**cfg).state_dict()), set(Decoder(**cfg).state_dict())
    for key in ("conv_in.weight", "down.0.block.0.norm1.weight", "down.0.downsample.conv.weight",
                "down.1.block.0.nin_shortcut.weight", "down.1.attn.1.proj_out.weight", "mid.block_1.conv2.bias",
                "mid.attn_1.q.weight", "norm_out.weight", "conv_out.weight"):
        assert key in enc_keys, key
    for key in ("conv_in.weight", "mid.attn_1.k.weight", "up.1.block.2.conv1.weight", "up.1.attn.2.v.bias",
                "up.1.upsample.conv.weight", "up.0.block.0.nin_shortcut.weight", "conv_out.bias"):
        assert key in dec_keys, key
    assert not any(k.startswith("up.0.upsample") or k.startswith("down.1.downsample") for k in enc_keys | dec_keys)


# ---------------------------------------------------------------- argument checks


@pytest.mark.parametrize("cls", [Encoder, Decoder])
@pytest.mark.parametrize(
    "override, message",
    [
        (dict(resolution=36), "not divisible by the down-sampling factor f = 8"),
        (dict(ch=12), "norm_groups=8 needs channel counts divisible"),
        (dict(attn_resolutions=(12,)), "match no level"),
        (dict(ch_mult=()), "ch_mult must be a non-empty"),
        (dict(ch_mult=(1, 0)), "ch_mult must be a non-empty"),
        (dict(num_res_blocks=0), "num_res_blocks must be a positive integer"),
        (dict(z_channels=0), "z_channels must be a positive integer"),
        (dict(dropout=1.0), "dropout must be in"),
    ],
)
def test_bad_arguments(cls, override, message):
    kw = dict(ch=16, ch_mult=(1, 1, 2, 2), attn_resolutions=(), resolution=32, z_channels=4, norm_groups=8)
    kw.update(override)
    with pytest.raises(ValueError, match=message):
        cls(**kw)


def test_default_norm_groups_is_32():
    with pytest.raises(ValueError, match="norm_groups=32"):
        Encoder(ch=16, ch_mult=(1, 2), attn_resolutions=(), resolution=16, z_channels=4)
    enc = Encoder(ch=32, ch_mult=(1, 2), attn_resolutions=(), resolution=16, z_channels=4)
    norms = [m for m in enc.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert all(m.num_groups == 32 and m.eps == 1e-6 for m in norms)
