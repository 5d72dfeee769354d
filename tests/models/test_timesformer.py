"""The TimeSformer video encoder/decoder (divided space-time attention) and the video tokenizer;
the huggingface flavour against transformers' own TimesformerLayer / TimesformerModel."""

import pytest
import torch

from rvq_cli.models import TimeSformerDecoder, TimeSformerEncoder, build_timesformer_tokenizer
from rvq_cli.models.video import FLAVOURS, DividedBlock, HFDividedBlock, sincos_1d


def tiny(**kw):
    args = dict(frames=4, image_size=16, patch_size=4, dim=32, depth=1, heads=4, mlp_dim=64, z_channels=32,
                embed_dim=8, quantizer=dict(codebook_size=16, lookup="cosine"))
    args.update(kw)
    torch.manual_seed(0)
    return build_timesformer_tokenizer(**args)


def clips(b=2, t=4, s=16, seed=1):
    return torch.rand(b, 3, t, s, s, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def reference_block(block: DividedBlock, x: torch.Tensor) -> torch.Tensor:
    """The divided block written out with explicit loops: attention over frames for each patch
    position, then over patches for each frame, then the MLP."""
    b, t, n, d = x.shape
    x = x.clone()
    for j in range(n):
        seq = x[:, :, j]  # (B, T, D)
        x[:, :, j] = seq + block.temporal_fc(block.temporal_attn(block.norm_t(seq)))
    out = x.clone()
    for i in range(t):
        seq = x[:, i]  # (B, N, D)
        seq = seq + block.attn(block.norm1(seq))
        out[:, i] = seq + block.mlp(block.norm2(seq))
    return out


def test_divided_block_is_temporal_then_spatial_attention():
    torch.manual_seed(2)
    block = DividedBlock(16, 2, 32).eval()
    x = torch.randn(2, 3, 5, 16)
    with torch.no_grad():
        torch.testing.assert_close(block(x), reference_block(block, x), rtol=1e-5, atol=1e-6)


def test_frames_interact_only_through_the_blocks():
    x = clips()
    y = x.clone()
    y[:, :, 1] = -y[:, :, 1]  # change frame 1 only
    for depth, frame0_changes in ((0, False), (1, True)):
        enc = tiny(depth=depth).encoder.eval()
        with torch.no_grad():
            a, b = enc(x), enc(y)
        assert not torch.equal(a[:, :, 1], b[:, :, 1])
        assert (not torch.equal(a[:, :, 0], b[:, :, 0])) == frame0_changes


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_video_tokens_and_round_trip_bit_for_bit(flavour):
    model = tiny(flavour=flavour).eval()
    x = clips()
    with torch.no_grad():
        out = model(x)
        tokens = model.encode(x)
    assert out.reconstruction.shape == x.shape
    assert tokens.shape == (2, 4, 4, 4) == (2, *model.latent_shape((4, 16, 16)))
    assert torch.equal(model.decode_indices(tokens), out.reconstruction)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_video_tokenizer_trains_a_step(flavour):
    model = tiny(quantizer=dict(codebook_size=16, estimator="rotation"), flavour=flavour).train()
    x = clips()
    out = model(x)
    (torch.nn.functional.mse_loss(out.reconstruction, x) + out.quantize.loss).backward()
    enc = torch.cat([p.grad.flatten() for p in model.encoder.parameters()])
    assert torch.isfinite(enc).all() and enc.abs().sum() > 0


def test_wrong_clip_sizes_are_refused():
    model = tiny()
    with pytest.raises(ValueError, match=r"clips \(B, 3, T, H, W\)"):
        model(torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match="built for clips of 4 frames"):
        model.encoder(torch.zeros(1, 3, 5, 16, 16))
    with pytest.raises(ValueError, match=r"\(T, H, W\)"):
        model.latent_shape((16, 16))
    with pytest.raises(ValueError, match=r"\(B, T, h, w\)"):
        model.decode_indices(torch.zeros(2, 4, 4, dtype=torch.long))


def test_time_embedding_tells_frames_apart():
    emb = sincos_1d(32, 16)
    assert emb.shape == (16, 32)
    dist = torch.cdist(emb, emb)
    assert (dist + torch.eye(16)).min() > 0.1  # no two frames share an embedding
    with pytest.raises(ValueError):
        sincos_1d(31, 4)


def test_encoder_and_decoder_mirror_each_other():
    args = dict(frames=2, image_size=(8, 12), patch_size=4, dim=16, depth=1, heads=2, mlp_dim=32, z_channels=8)
    enc = TimeSformerEncoder(in_channels=3, **args)
    dec = TimeSformerDecoder(out_channels=3, **args)
    z = enc(torch.zeros(1, 3, 2, 8, 12))
    assert z.shape == (1, 8, 2, 2, 3)
    assert dec(z).shape == (1, 3, 2, 8, 12)


# ---------------------------------------------------------------- flavours: state dicts

BLOCK_KEYS = ["norm_t.weight", "norm_t.bias", "temporal_attn.qkv.weight", "temporal_attn.proj.weight",
              "temporal_attn.proj.bias", "temporal_fc.weight", "temporal_fc.bias", "norm1.weight", "norm1.bias",
              "attn.qkv.weight", "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias",
              "mlp.0.weight", "mlp.0.bias", "mlp.3.weight", "mlp.3.bias"]
SMALL = dict(frames=3, image_size=8, patch_size=2, dim=16, depth=1, heads=2, mlp_dim=32, z_channels=8)


def test_rvq_flavour_state_dict_is_unchanged():
    """The default flavour has the parameters of checkpoints written before flavours existed (no
    embeddings: they are a non-persistent buffer), and the same draws as flavour=rvq spelled out."""
    enc, dec = TimeSformerEncoder(in_channels=3, **SMALL), TimeSformerDecoder(out_channels=3, **SMALL)
    blocks = [f"blocks.0.{k}" for k in BLOCK_KEYS]
    assert list(enc.state_dict()) == ["patch_embed.weight", "patch_embed.bias", *blocks, "norm.weight", "norm.bias",
                                      "proj_out.weight", "proj_out.bias"]
    assert list(dec.state_dict()) == ["proj_in.weight", "proj_in.bias", *blocks, "norm.weight", "norm.bias",
                                      "conv_out.weight", "conv_out.bias"]
    assert enc.norm.eps == enc.blocks[0].norm1.eps == 1e-5 and enc.blocks[0].attn.qkv.bias is None
    torch.manual_seed(0)
    default = tiny().state_dict()
    torch.manual_seed(0)
    named = tiny(flavour="rvq", init="trunc_normal").state_dict()
    assert list(default) == list(named) and all(torch.equal(default[k], named[k]) for k in default)


def test_huggingface_flavour_state_dict():
    enc = TimeSformerEncoder(in_channels=3, flavour="huggingface", **SMALL)
    dec = TimeSformerDecoder(out_channels=3, flavour="huggingface", **SMALL)
    embeddings = {"cls_token": (1, 1, 16), "position_embeddings": (1, 1 + 16, 16), "time_embeddings": (1, 3, 16)}
    for part in (enc, dec):
        sd = part.state_dict()
        assert {k: tuple(sd[k].shape) for k in embeddings} == embeddings
        assert sd["blocks.0.attn.qkv.bias"].shape == sd["blocks.0.temporal_attn.qkv.bias"].shape == (48,)
        assert part.norm.eps == part.blocks[0].norm_t.eps == 1e-6
        assert "pos_embed" not in dict(part.named_buffers())
    assert not torch.equal(enc.cls_token, dec.cls_token)  # the decoder has its own
    with pytest.raises(ValueError, match="unknown flavour 'timm'; valid: rvq, huggingface"):
        TimeSformerEncoder(in_channels=3, flavour="timm", **SMALL)
    with pytest.raises(ValueError, match="unknown init 'zeros'"):
        TimeSformerDecoder(out_channels=3, init="zeros", **SMALL)


def test_the_recipe_keys_reach_the_model():
    from rvq_cli.config import ModelConfig
    from rvq_cli.models import build_tokenizer

    model = ModelConfig(name="timesformer", timesformer={"patch_size": 4, "dim": 32, "depth": 1, "heads": 4,
                                                         "mlp_dim": 64, "flavour": "huggingface", "init": "xavier"},
                        quantizer={"dim": 8, "codebook_size": 16})
    tok = build_tokenizer(model, image_size=16, frames=4)
    assert tok.encoder.flavour == tok.decoder.flavour == "huggingface"
    assert tok.encoder.blocks[0].mlp[0].weight.abs().max() > 0.2  # xavier's bound √(6 / 96) = 0.25, not σ 0.02
    assert tok(clips()).reconstruction.shape == (2, 3, 4, 16, 16)


# ---------------------------------------------------------------- the huggingface flavour against transformers

# transformers' TimesformerLayer parameter -> rvq's HFDividedBlock parameter
LAYER_KEYS = {
    "temporal_layernorm": "norm_t",
    "temporal_attention.attention.qkv": "temporal_attn.qkv",
    "temporal_attention.output.dense": "temporal_attn.proj",
    "temporal_dense": "temporal_fc",
    "layernorm_before": "norm1",
    "attention.attention.qkv": "attn.qkv",
    "attention.output.dense": "attn.proj",
    "layernorm_after": "norm2",
    "intermediate.dense": "mlp.0",
    "output.dense": "mlp.3",
}
# transformers' TimesformerModel parameter (outside the layers) -> rvq's TimeSformerEncoder parameter
MODEL_KEYS = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "position_embeddings",
    "embeddings.time_embeddings": "time_embeddings",
    "embeddings.patch_embeddings.projection": "patch_embed",
    "layernorm": "norm",
}


def _rename(key: str, table: dict) -> str:
    for theirs, ours in table.items():
        if key == theirs or key.startswith(theirs + "."):
            return ours + key[len(theirs):]
    raise KeyError(key)


def rvq_key(key: str) -> str:
    """A TimesformerModel parameter name -> the encoder's (encoder.layer.i.* -> blocks.i.*)."""
    if key.startswith("encoder.layer."):
        i, rest = key[len("encoder.layer."):].split(".", 1)
        return f"blocks.{i}.{_rename(rest, LAYER_KEYS)}"
    return _rename(key, MODEL_KEYS)


def hf_config(depth=1, dim=16, mlp_dim=32):
    transformers = pytest.importorskip("transformers")
    return transformers.TimesformerConfig(image_size=8, patch_size=2, num_channels=3, num_frames=3, hidden_size=dim,
                                          num_hidden_layers=depth, num_attention_heads=2, intermediate_size=mlp_dim,
                                          hidden_act="gelu", attention_type="divided_space_time")


def perturb(module, seed):
    """Move every parameter off its init (transformers starts time embeddings and biases at 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def copy_into(ours, theirs, rename):
    """Load ``theirs``' parameters into ``ours`` by the key mapping: every parameter on both sides."""
    mapped = {rename(k): v for k, v in theirs.state_dict().items()}
    assert set(mapped) == set(ours.state_dict())
    ours.load_state_dict(mapped)


def grads(out, inputs, seed=5):
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return torch.autograd.grad((out * w).sum(), inputs)


def test_hf_block_equals_transformers_timesformer_layer():
    """HFDividedBlock on (patches (B, T, N, D), class token) = TimesformerLayer on transformers'
    sequence [class; patches patch-major, frame-minor], outputs and gradients (float64)."""
    from transformers.models.timesformer.modeling_timesformer import TimesformerLayer

    theirs = TimesformerLayer(hf_config(), 0).double().eval()
    perturb(theirs, 0)
    ours = HFDividedBlock(16, 2, 32).double().eval()
    copy_into(ours, theirs, lambda k: _rename(k, LAYER_KEYS))
    b, t, n, d = 2, 3, 16, 16
    seq = torch.randn(b, 1 + n * t, d, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    seq.requires_grad_(True)
    (expected,) = theirs(seq)
    x, cls = ours(seq[:, 1:].reshape(b, n, t, d).transpose(1, 2), seq[:, :1])  # -> (B, T, N, D), (B, 1, D)
    got = torch.cat([cls, x.transpose(1, 2).reshape(b, n * t, d)], dim=1)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    their_params, our_params = dict(theirs.named_parameters()), dict(ours.named_parameters())
    names = list(their_params)
    g_theirs = grads(expected, [seq, *(their_params[k] for k in names)])
    g_ours = grads(got, [seq, *(our_params[_rename(k, LAYER_KEYS)] for k in names)])
    for name, a, e in zip(["input", *names], g_ours, g_theirs):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12, msg=name)


def test_hf_encoder_equals_transformers_timesformer_model():
    """The huggingface-flavour encoder (z_channels = dim: no projection) = TimesformerModel's
    patch tokens (embeddings, 2 layers, LayerNorm), outputs and input gradients (float64)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    theirs = transformers.TimesformerModel(hf_config(depth=2)).double().eval()
    perturb(theirs, 1)
    ours = TimeSformerEncoder(in_channels=3, flavour="huggingface", **{**SMALL, "depth": 2, "z_channels": 16})
    ours = ours.double().eval()
    copy_into(ours, theirs, rvq_key)
    x = torch.randn(2, 3, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x.requires_grad_(True)
    expected = theirs(pixel_values=x.transpose(1, 2)).last_hidden_state[:, 1:]  # it takes (B, T, C, H, W)
    z = ours(x)  # (B, D, T, h, w) -> (B, h, w, T, D): transformers' patch-major, frame-minor order
    got = z.permute(0, 3, 4, 2, 1).reshape(2, 16 * 3, 16)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grads(got, [x])[0], grads(expected, [x])[0], rtol=1e-10, atol=1e-12)


class _Given(torch.nn.Module):
    """Stands in for transformers' patch embedding: passes tokens (B, T, N, D) through as its
    (B·T, N, D) output, so that its TimesformerEmbeddings embed the decoder's tokens."""

    def forward(self, tokens):
        b, t, n, d = tokens.shape
        return tokens.reshape(b * t, n, d), t, 4


def test_hf_decoder_mirrors_transformers_timesformer_model():
    """The decoder's own class token and embeddings, its blocks and LayerNorm = TimesformerModel
    on the decoder's tokens; then the same conv_out (float64)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    theirs = transformers.TimesformerModel(hf_config(depth=2)).double().eval()
    theirs.embeddings.patch_embeddings = _Given()
    perturb(theirs, 3)
    ours = TimeSformerDecoder(out_channels=3, flavour="huggingface", **{**SMALL, "depth": 2, "z_channels": 16})
    ours = ours.double().eval()
    mapped = {rvq_key(k): v for k, v in theirs.state_dict().items()}
    mapped.update({k: v for k, v in ours.state_dict().items() if k.startswith("conv_out.")})
    assert set(mapped) == set(ours.state_dict())
    ours.load_state_dict(mapped)
    z = torch.randn(2, 16, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    z.requires_grad_(True)
    h = theirs(pixel_values=z.permute(0, 2, 3, 4, 1).reshape(2, 3, 16, 16)).last_hidden_state[:, 1:]
    h = h.reshape(2, 4, 4, 3, 16).permute(0, 3, 4, 1, 2).reshape(6, 16, 4, 4)  # (B·T, D, h, w)
    expected = ours.conv_out(h).reshape(2, 3, 3, 8, 8).transpose(1, 2)  # (B, C, T, H, W)
    got = ours(z)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grads(got, [z])[0], grads(expected, [z])[0], rtol=1e-10, atol=1e-12)


def test_hf_flavour_init_follows_transformers():
    """Parameter for parameter, the huggingface flavour draws what transformers' _init_weights
    draws: zeros (biases, time embeddings) and ones (LayerNorm) where it has them, and N(0, 0.02²)
    for weights, class token and position embeddings, not cut at ±2σ as rvq's trunc_normal."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    theirs = transformers.TimesformerModel(hf_config(dim=64, mlp_dim=256)).state_dict()
    ours = TimeSformerEncoder(in_channels=3, flavour="huggingface",
                              **{**SMALL, "dim": 64, "mlp_dim": 256, "z_channels": 64}).state_dict()
    assert {rvq_key(k) for k in theirs} == set(ours)
    for key, t in theirs.items():
        o = ours[rvq_key(key)]
        assert o.shape == t.shape, key
        for const in (0.0, 1.0):
            assert torch.equal(o, torch.full_like(o, const)) == torch.equal(t, torch.full_like(t, const)), key
        if t.numel() >= 4096 and t.std() > 0:
            for w in (o, t):
                assert 0.019 < w.std() < 0.021 and w.abs().max() > 0.05, key
