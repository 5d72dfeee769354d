"""The TimeSformer video encoder/decoder (divided space-time attention) and the video tokenizer."""

import pytest
import torch

from rvq_cli.models import TimeSformerDecoder, TimeSformerEncoder, build_timesformer_tokenizer
from rvq_cli.models.video import DividedBlock, sincos_1d


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


def test_video_tokens_and_round_trip_bit_for_bit():
    model = tiny().eval()
    x = clips()
    with torch.no_grad():
        out = model(x)
        tokens = model.encode(x)
    assert out.reconstruction.shape == x.shape
    assert tokens.shape == (2, 4, 4, 4) == (2, *model.latent_shape((4, 16, 16)))
    assert torch.equal(model.decode_indices(tokens), out.reconstruction)


def test_video_tokenizer_trains_a_step():
    model = tiny(quantizer=dict(codebook_size=16, estimator="rotation")).train()
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
