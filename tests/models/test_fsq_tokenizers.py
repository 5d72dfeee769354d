"""FSQ in every tokenizer family: the recipe's ``model.quantizer`` (kind fsq) builds an
FSQuantizer in the conv, ViT and TimeSformer tokenizers; forward and backward reach every
encoder and decoder weight, and tokens decode to the forward reconstruction bit for bit."""

import pytest
import torch

from rvq_cli.config import Recipe
from rvq_cli.models import build_conv_tokenizer, build_tokenizer, quantizer_arguments
from rvq_cli.quantize import FSQuantizer, VectorQuantizer

FAMILIES = {
    "conv": ({"encoder": {"ch": 8, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [], "z_channels": 4,
                          "norm_groups": 4}}, (2, 3, 16, 16)),
    "vit": ({"vit": {"patch_size": 4, "dim": 32, "depth": 1, "heads": 4, "mlp_dim": 64}}, (2, 3, 16, 16)),
    "timesformer": ({"timesformer": {"patch_size": 4, "dim": 32, "depth": 1, "heads": 4, "mlp_dim": 64}},
                    (2, 3, 4, 16, 16)),
}


def tokenizer(name, dim=8, levels=(8, 5, 5, 5), seed=0):
    arch, shape = FAMILIES[name]
    quantizer = {"kind": "fsq", "levels": list(levels), "dim": dim}
    model = Recipe.model_validate({"model": {"name": name, **arch, "quantizer": quantizer}}).model
    torch.manual_seed(seed)
    frames = shape[2] if name == "timesformer" else 16
    return build_tokenizer(model, image_size=16, frames=frames), shape


def images(shape, seed=1):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_recipe_section_becomes_fsq_arguments():
    model = Recipe.model_validate({"model": {"quantizer": {"kind": "fsq", "levels": [8, 5, 5, 5]}}}).model
    assert quantizer_arguments(model) == {"kind": "fsq", "levels": [8, 5, 5, 5]}
    assert "kind" not in quantizer_arguments(Recipe().model)  # vq: the section as it is, as before


@pytest.mark.parametrize("name", list(FAMILIES))
@pytest.mark.parametrize("dim", [4, 8])  # 4: no projection inside the quantizer; 8: project 8 -> 4 -> 8
def test_family_trains_and_round_trips_with_fsq(name, dim):
    tok, shape = tokenizer(name, dim=dim)
    assert isinstance(tok.quantize, FSQuantizer) and tok.quantize.codebook_size == 1000
    assert tok.quantize.dim == dim and isinstance(tok.quantize.project_in, torch.nn.Identity) == (dim == 4)
    x = images(shape)
    out = tok.train()(x)
    assert out.reconstruction.shape == x.shape
    assert out.indices.shape == (shape[0], *tok.latent_shape(shape[2:] if name == "timesformer" else 16))
    (out.reconstruction - x).pow(2).mean().add(out.quantize.loss).backward()
    for pname, p in tok.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    assert any(float(p.grad.abs().sum()) > 0 for p in tok.encoder.parameters())  # through the rounding
    tok.eval()
    with torch.no_grad():
        rec = tok(x).reconstruction
        assert torch.equal(tok.decode_indices(tok.encode(x)), rec)


def test_conv_builder_takes_a_built_fsquantizer():
    fsq = FSQuantizer(4, [7, 5, 5, 5, 5])
    tok = build_conv_tokenizer(ch=8, ch_mult=(1, 2), attn_resolutions=(), resolution=16, z_channels=4, embed_dim=4,
                               quantizer=fsq, num_res_blocks=1, norm_groups=4)
    assert tok.quantize is fsq and tok.encode(images((1, 3, 16, 16))).max() < 4375


def test_unknown_kind_and_wrong_type_are_refused():
    common = dict(ch=8, ch_mult=(1, 2), attn_resolutions=(), resolution=16, z_channels=4, embed_dim=4,
                  num_res_blocks=1, norm_groups=4)
    with pytest.raises(ValueError, match="unknown quantizer kind 'lfq'; valid: vq, fsq"):
        build_conv_tokenizer(quantizer={"kind": "lfq"}, **common)
    with pytest.raises(TypeError, match="FSQuantizer, a VectorQuantizer or a mapping"):
        build_conv_tokenizer(quantizer=[8, 5, 5, 5], **common)
    assert isinstance(build_conv_tokenizer(quantizer={"kind": "vq", "codebook_size": 8}, **common).quantize,
                      VectorQuantizer)
