"""FSQuantizer (finite scalar quantization, Mentzer et al. 2023) against vector-quantize-pytorch's
FSQ as an independent implementation: the same codes, indices and input gradients (bit for bit),
its index <-> code maps, the round trip over the whole implicit codebook, eval forward ==
indices_to_codes, fp32 math under bf16 autocast, and the interface the tokenizers use."""

import math

import pytest
import torch
from vector_quantize_pytorch import FSQ

from rvq_cli.quantize import FSQuantizer, QuantizeMetrics
from rvq_cli.quantize.fsq import PAPER_LEVELS

LEVEL_SETS = [list(v) for v in PAPER_LEVELS.values()] + [[3, 4, 7]]


def latents(*shape, seed=0, scale=2.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def pair(levels, dim=None, seed=0):
    """vector-quantize-pytorch's FSQ and ours with the same levels and the same projection weights."""
    torch.manual_seed(seed)
    ref = FSQ(levels, dim=dim)
    ours = FSQuantizer(dim or len(levels), levels)
    ours.load_state_dict(ref.state_dict())  # the projections' weights (nothing else is in either state dict)
    return ref, ours


# ---------------------------------------------------------------- against vector-quantize-pytorch


@pytest.mark.parametrize("levels", LEVEL_SETS, ids=str)
def test_codes_indices_and_input_gradients_equal_vector_quantize_pytorch(levels):
    ref, ours = pair(levels)
    z = latents(3, len(levels), 5, 7).requires_grad_()
    z2 = z.detach().clone().requires_grad_()
    want, want_idx = ref(z)  # channel-first images: (B, d, H, W), indices (B, H, W) int32
    got = ours(z2)
    assert torch.equal(got.quantized, want)
    assert torch.equal(got.indices, want_idx.long())
    g = latents(*want.shape, seed=1)
    want.backward(g)
    got.quantized.backward(g)
    assert torch.equal(z2.grad, z.grad)


def test_projections_equal_vector_quantize_pytorch():
    """dim 16 ≠ 4 code channels: project_in/out with the same weights give the same output,
    indices, and gradients to the input and to every projection weight."""
    ref, ours = pair([8, 5, 5, 5], dim=16, seed=3)
    assert sorted(ours.state_dict()) == ["project_in.bias", "project_in.weight", "project_out.bias",
                                         "project_out.weight"]
    z = latents(2, 16, 4, 4, seed=4).requires_grad_()
    z2 = z.detach().clone().requires_grad_()
    want, want_idx = ref(z)
    got = ours(z2)
    torch.testing.assert_close(got.quantized, want, rtol=1e-6, atol=1e-6)
    assert torch.equal(got.indices, want_idx.long())
    g = latents(*want.shape, seed=5)
    want.backward(g)
    got.quantized.backward(g)
    torch.testing.assert_close(z2.grad, z.grad, rtol=1e-6, atol=1e-6)
    for (name, p), (_, p2) in zip(ref.named_parameters(), ours.named_parameters()):
        torch.testing.assert_close(p2.grad, p.grad, rtol=1e-5, atol=1e-6, msg=name)
    idx = got.indices
    torch.testing.assert_close(ours.indices_to_codes(idx), ref.indices_to_codes(idx), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("levels", LEVEL_SETS, ids=str)
def test_index_maps_equal_vector_quantize_pytorch(levels):
    """The mixed-radix maps: grid_points(k) is vector-quantize-pytorch's implicit codebook row k,
    and each side's codes_to_indices inverts the other's."""
    ref, ours = pair(levels)
    k = torch.arange(ours.codebook_size)
    pts = ours.grid_points(k)  # (K, d)
    assert torch.equal(pts, ref.implicit_codebook)
    assert torch.equal(ref.codes_to_indices(pts).long(), k)
    assert torch.equal(ours.grid_indices(ref.implicit_codebook), k)
    img = k[torch.randperm(len(k), generator=torch.Generator().manual_seed(0))[:60]].reshape(2, 5, 6)
    assert torch.equal(ours.indices_to_codes(img), ref.indices_to_codes(img))


# ---------------------------------------------------------------- the implicit codebook


@pytest.mark.parametrize("levels", LEVEL_SETS, ids=str)
def test_whole_codebook_round_trips_bit_for_bit(levels):
    fsq = FSQuantizer(len(levels), levels)
    k = torch.arange(fsq.codebook_size)
    codes = fsq.indices_to_codes(k.reshape(1, -1))  # (1, d, K)
    assert codes.shape == (1, len(levels), fsq.codebook_size)
    pts = codes[0].T  # (K, d)
    assert torch.equal(pts, fsq.grid_points(k))
    assert torch.equal(fsq.grid_indices(pts), k)
    assert len(torch.unique(pts, dim=0)) == fsq.codebook_size == math.prod(levels)
    assert pts.min() >= -1 and pts.max() <= 1
    for i, n in enumerate(levels):  # each channel takes exactly its n values
        assert len(torch.unique(pts[:, i])) == n


def test_saturated_inputs_reach_the_outer_levels():
    fsq = FSQuantizer(4, [8, 5, 5, 5])
    z = torch.tensor([1e4, -1e4, float("inf"), -float("inf")]).reshape(4, 1, 1).expand(4, 4, 1)  # (B, d, 1)
    out = fsq(z)
    assert out.indices.reshape(-1).tolist() == [fsq.codebook_size - 1, 0, fsq.codebook_size - 1, 0]
    assert torch.equal(out.quantized[0, :, 0], torch.tensor([0.75, 1.0, 1.0, 1.0]))  # even 8: -4..3 over 4
    assert torch.equal(out.quantized[1, :, 0], torch.full((4,), -1.0))


# ---------------------------------------------------------------- bit-exact forward


@pytest.mark.parametrize("dim", [4, 12])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("training", [False, True])
def test_forward_value_is_indices_to_codes_bit_for_bit(dim, dtype, training):
    torch.manual_seed(0)
    fsq = FSQuantizer(dim, [8, 5, 5, 5]).train(training)
    z = latents(2, dim, 3, 5, seed=2).to(dtype).requires_grad_(training)
    out = fsq(z)
    assert out.quantized.dtype == dtype and out.indices.dtype == torch.int64
    want = fsq.indices_to_codes(out.indices, dtype)
    assert torch.equal(out.quantized.detach(), want)
    assert out.quantized.detach().view(torch.int16 if dtype == torch.bfloat16 else torch.int32).equal(
        want.view(torch.int16 if dtype == torch.bfloat16 else torch.int32))  # the bits, signed zeros included


def test_math_is_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    fsq = FSQuantizer(12, [7, 5, 5, 5, 5])
    z = latents(2, 12, 4, 4, seed=3)
    plain = fsq(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = fsq(z)
        auto16 = fsq(z.bfloat16())
    assert auto.quantized.dtype == torch.float32
    assert torch.equal(auto.quantized, plain.quantized) and torch.equal(auto.indices, plain.indices)
    assert auto16.quantized.dtype == torch.bfloat16
    assert torch.equal(auto16.quantized, fsq.indices_to_codes(auto16.indices, torch.bfloat16))
    assert torch.equal(auto16.indices, fsq(z.bfloat16().float()).indices)  # the bf16 input, quantized in fp32


def test_cast_module_keeps_fp32_math():
    """model.to(bf16) casts the projections; the layer still computes in fp32 and its integer
    constants stay integers."""
    torch.manual_seed(0)
    fsq = FSQuantizer(12, [8, 5, 5, 5])
    z = latents(2, 12, 3, 3, seed=6).bfloat16()
    want = fsq(z)
    fsq.to(torch.bfloat16)
    assert fsq.level_counts.dtype == torch.long and fsq.basis.dtype == torch.long
    got = fsq(z)
    assert got.quantized.dtype == torch.bfloat16
    assert torch.equal(got.quantized, fsq.indices_to_codes(got.indices, torch.bfloat16))
    assert (got.indices == want.indices).float().mean() > 0.9  # bf16-rounded projection weights


# ---------------------------------------------------------------- the tokenizers' interface


def test_losses_metrics_and_attributes():
    fsq = FSQuantizer(4, [8, 5, 5, 5]).train()
    assert (fsq.codebook_size, fsq.codebook_dim, fsq.dim) == (1000, 4, 4)
    assert fsq.estimator.name == "ste" and fsq.estimator.kind == "pointwise"
    assert fsq.state_dict() == {}  # an implicit codebook: no parameter, no persistent buffer
    z = latents(4, 4, 6, 6, seed=7)
    out = fsq(z)
    for term in (out.losses.commitment, out.losses.codebook, out.losses.prior, out.loss):
        assert float(term) == 0.0
    m = out.metrics
    assert isinstance(m, QuantizeMetrics)
    idx = out.indices.reshape(-1)
    counts = torch.bincount(idx, minlength=1000).float()
    p = counts[counts > 0] / len(idx)
    torch.testing.assert_close(m.usage, (counts > 0).float().mean())
    torch.testing.assert_close(m.perplexity, (-(p * p.log()).sum()).exp())
    e = fsq.bound(z.movedim(1, -1).reshape(-1, 4)) / torch.tensor([4.0, 2, 2, 2])  # bounded latents, code space
    q = fsq.grid_points(idx)
    torch.testing.assert_close(m.quant_error, (e - q).pow(2).mean())
    torch.testing.assert_close(m.latent_power, e.pow(2).mean())
    torch.testing.assert_close(m.obtuse, ((e * q).sum(-1) < 0).float().mean())
    assert float(m.fallbacks) == 0 and float(m.restarted) == 0
    assert 0 < float(m.quant_error) <= 1 / 16  # at most half a level step (1/4 or 1/2) squared per channel
    fsq.anneal(0, 10)  # no schedule: nothing to do


def test_gradient_is_straight_through_and_recorded():
    fsq = FSQuantizer(4, [8, 5, 5, 5]).train()
    z = latents(2, 4, 3, 3, seed=8).requires_grad_()
    out = fsq(z)
    g = latents(*out.quantized.shape, seed=9)
    out.quantized.backward(g)
    assert fsq.gradient_cosine() == pytest.approx(1.0)  # grad_e = g
    assert fsq.gradient_cosine() is None  # read and reset
    # through the bound: grad_z = g/⌊L/2⌋ · half_l · (1 − tanh²(z + shift))
    zz = z.detach().clone().requires_grad_()
    (fsq.bound(zz.movedim(1, -1)) / torch.tensor([4.0, 2, 2, 2])).backward(g.movedim(1, -1))
    torch.testing.assert_close(z.grad, zz.grad)
    with torch.no_grad():
        fsq(z)
    assert fsq.gradient_cosine() is None  # no backward pass, nothing recorded


@pytest.mark.parametrize("levels, estimator, match", [
    ([8, 2, 5], "ste", "every level must be >= 3"),
    ([], "ste", "non-empty list"),
    ([8, 5.0], "ste", "list of integers"),
    ([8, 5, 5, 5], "rotation", "estimator must be 'ste'"),
    ([2**16, 2**16], "ste", "more than token shards can index"),
])
def test_bad_arguments_are_refused(levels, estimator, match):
    with pytest.raises(ValueError, match=match):
        FSQuantizer(4, levels, estimator=estimator)


def test_bad_inputs_and_indices_are_refused():
    fsq = FSQuantizer(4, [8, 5, 5, 5])
    with pytest.raises(ValueError, match=r"expected input \(B, 4, \*spatial\)"):
        fsq(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"out of range: expected 0..999, got 0..1000"):
        fsq.indices_to_codes(torch.tensor([[0, 1000]]))
    with pytest.raises(ValueError, match="integer tensor"):
        fsq.indices_to_codes(torch.zeros(1, 2))
    with pytest.raises(ValueError, match=r"grid points \(..., 4\)"):
        fsq.grid_indices(torch.zeros(3, 5))
