"""model.pixel_norm clip: the official Table 1 code's input convention (torchvision's
Normalize with CLIP's mean and std on [0, 1] images, the MSE taken there), checked against
torchvision's own transform, with rvq's images, tokens and outputs staying in [-1, 1]."""

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import Normalize

from rvq_cli.config import RecipeError, load_recipe
from rvq_cli.evaluation.evaluator import _Accumulator
from rvq_cli.losses import pixel_losses
from rvq_cli.models import build_conv_tokenizer

CLIP = Normalize(mean=torch.tensor([0.4815, 0.4578, 0.4082]), std=torch.tensor([0.2686, 0.2613, 0.2758]))
ARCH = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), resolution=16, z_channels=4, norm_groups=4)


def images(n=2, seed=0):
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def tokenizer(pixel_norm):
    torch.manual_seed(0)
    tok = build_conv_tokenizer(embed_dim=4, quantizer={"codebook_size": 16}, **ARCH)
    tok.set_pixel_norm(pixel_norm)
    return tok.eval()


def test_the_encoder_sees_torchvisions_normalisation_and_outputs_come_back_to_signed_pixels():
    tok, x = tokenizer("clip"), images()
    seen, emitted = {}, {}
    tok.encoder.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    tok.decoder.register_forward_hook(lambda m, args, out: emitted.setdefault("y", out))
    out = tok(x)
    torch.testing.assert_close(seen["x"], CLIP((x + 1) / 2))
    # the decoder's output is in the normalised space; the reconstruction is its image in [-1, 1]
    std, mean = CLIP.std.view(1, 3, 1, 1), CLIP.mean.view(1, 3, 1, 1)
    torch.testing.assert_close(out.reconstruction, (emitted["y"] * std + mean) * 2 - 1)
    assert torch.equal(tok.decode_indices(tok.encode(x)), out.reconstruction)


def test_signed_is_the_identity_and_keeps_the_state_dict():
    tok, x = tokenizer("signed"), images()
    seen = {}
    tok.encoder.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    tok(x)
    assert seen["x"] is x and tok.pixel_scale is None
    assert tokenizer("clip").state_dict().keys() == tok.state_dict().keys()


def test_the_reconstruction_loss_is_upstreams_mse_in_the_normalised_space():
    tok, x = tokenizer("clip"), images(seed=1)
    emitted = {}
    tok.decoder.register_forward_hook(lambda m, args, out: emitted.setdefault("y", out))
    rec = tok(x).reconstruction
    upstream = F.mse_loss(emitted["y"], CLIP((x + 1) / 2))  # vq_vae.py: F.mse_loss(init_x, x) on Normalize'd x
    ours = pixel_losses(x, rec, "l2", tok.pixel_scale)["rec"]
    torch.testing.assert_close(ours, upstream)
    # ≈ 1 / (2·std)² ≈ 3.5× the [-1, 1] MSE
    assert float(ours.detach()) > 3 * float(pixel_losses(x, rec.detach(), "l2")["rec"])


def test_eval_reports_the_loss_training_minimises():
    tok, x = tokenizer("clip"), images(seed=2)
    with torch.no_grad():
        out = tok(x)
    acc = _Accumulator(16, 4, "l2", fid=False, pixel_scale=tok.pixel_scale)
    acc.add(x, out.reconstruction, out.quantize, ["a", "b"], inception=None)
    torch.testing.assert_close(acc.sums["rec"] / acc.sums["elements"],
                               float(pixel_losses(x, out.reconstruction, "l2", tok.pixel_scale)["rec"]),
                               rtol=1e-5, atol=0)
    assert acc.sums["rec"] > 3 * acc.sums["se"]  # mse stays the [-1, 1] one


def test_clip_needs_rgb(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  pixel_norm: clip\n  encoder: {in_channels: 1}\n")
    with pytest.raises(RecipeError, match="model.pixel_norm"):
        load_recipe(recipe, check_paths=False)
    with pytest.raises(ValueError, match="pixel_norm"):
        tokenizer("lab")


def test_unit_is_torchvisions_to_tensor_range():
    """pixel_norm unit: the encoder sees ToTensor's [0, 1] pixels (enhancing-transformers' ViT-VQGAN,
    no Normalize) and the rec term is the [0, 1] MSE, a quarter of the [-1, 1] one."""
    tok, x = tokenizer("unit"), images(seed=3)
    seen, emitted = {}, {}
    tok.encoder.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    tok.decoder.register_forward_hook(lambda m, args, out: emitted.setdefault("y", out))
    with torch.no_grad():
        rec = tok(x).reconstruction
    torch.testing.assert_close(seen["x"], (x + 1) / 2)
    torch.testing.assert_close(rec, emitted["y"] * 2 - 1)
    torch.testing.assert_close(pixel_losses(x, rec, "l2", tok.pixel_scale)["rec"],
                               F.mse_loss(emitted["y"], (x + 1) / 2))
