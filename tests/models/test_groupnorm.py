"""GroupNorm (+ SiLU) on channels-last CPU maps in rvq_cli/native/groupnorm.c against PyTorch in
float64, forward and backward, and the cases that stay in PyTorch."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rvq_cli import native
from rvq_cli.models.conv import Decoder, Encoder
from rvq_cli.models.groupnorm import norm_silu, twice_differentiable, uses_c_loops

CL = torch.channels_last


@pytest.fixture
def c_loops():
    if native.status() != "in use":
        pytest.skip(f"no C loops here: {native.status()}")


def _case(dtype, affine=True, shape=(3, 12, 5, 7), groups=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) * 3 + 1).to(dtype).contiguous(memory_format=CL)
    norm = nn.GroupNorm(groups, shape[1], eps=1e-6, affine=affine)
    if affine:
        with torch.no_grad():
            norm.weight.copy_(torch.randn(shape[1], generator=g))
            norm.bias.copy_(torch.randn(shape[1], generator=g))
    dy = torch.randn(shape, generator=g).to(dtype).contiguous(memory_format=CL)
    return x, norm, dy


def _reference(x, norm, dy, silu):
    xr = x.detach().double().requires_grad_()
    w = b = None
    if norm.affine:
        w, b = (p.detach().double().requires_grad_() for p in (norm.weight, norm.bias))
    y = F.group_norm(xr, norm.num_groups, w, b, norm.eps)
    y = F.silu(y) if silu else y
    y.backward(dy.double())
    return y, xr.grad, None if w is None else w.grad, None if b is None else b.grad


@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_c_loops_compute_groupnorm_and_its_gradients(silu, affine, dtype, tol, c_loops):
    x, norm, dy = _case(dtype, affine)
    x.requires_grad_()
    assert uses_c_loops(x, norm)
    y = norm_silu(norm, x, silu)
    assert y.dtype == dtype and y.is_contiguous(memory_format=CL)
    y.backward(dy)
    ref = _reference(x, norm, dy, silu)
    got = (y, x.grad) + ((norm.weight.grad, norm.bias.grad) if affine else (None, None))
    for a, b in zip(got, ref, strict=True):
        if b is None:
            assert a is None
            continue
        err = (a.double() - b).abs().max().item() / b.abs().max().item()
        assert err <= tol, err


def test_threads_change_nothing(c_loops):
    x, norm, dy = _case(torch.float32, shape=(5, 16, 40, 40))  # large enough to run in parallel
    x.requires_grad_()
    threads = torch.get_num_threads()
    results = []
    try:
        for t in (1, 3):
            torch.set_num_threads(t)
            y = norm_silu(norm, x)
            results.append((y, *torch.autograd.grad(y, (x, norm.weight), dy)))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def test_other_tensors_stay_in_pytorch(c_loops):
    x, norm, _ = _case(torch.float32)
    assert uses_c_loops(x, norm)
    assert not uses_c_loops(x.contiguous(), norm)  # contiguous maps: PyTorch's kernel is fast there
    assert not uses_c_loops(x.double(), norm)
    assert not uses_c_loops(x, norm.bfloat16())
    with twice_differentiable():
        assert not uses_c_loops(x, nn.GroupNorm(4, 12))
    # and what stays in PyTorch still computes the same function
    x, norm, _ = _case(torch.float64)
    norm.double()
    torch.testing.assert_close(norm_silu(norm, x), F.silu(norm(x)))


def test_twice_differentiable_gives_a_second_derivative(c_loops):
    x, norm, _ = _case(torch.float32)
    x.requires_grad_()
    with twice_differentiable():
        y = norm_silu(norm, x)
    (g,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad(g.sum(), x)
    assert torch.isfinite(gg).all() and gg.abs().sum() > 0


def test_channels_last_conv_model_is_as_close_to_fp32_as_contiguous(c_loops):
    # the whole encoder + decoder in bf16 autocast: channels_last (GroupNorm in C) and contiguous
    # (PyTorch) against the fp32 contiguous run of the same weights; bf16 moves both, by as much
    torch.manual_seed(0)
    arch = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), resolution=16, z_channels=8)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    results = {}
    for precision, layout in (("fp32", torch.contiguous_format), ("bf16", torch.contiguous_format), ("bf16", CL)):
        torch.manual_seed(1)
        enc, dec = Encoder(in_channels=3, **arch), Decoder(out_channels=3, **arch)
        enc.to(memory_format=layout), dec.to(memory_format=layout)
        with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
            out = dec(enc(x.contiguous(memory_format=layout)))
        out.float().square().mean().backward()
        results[precision, layout] = [out.float(), enc.conv_in.weight.grad, dec.norm_out.weight.grad]
    ref = results["fp32", torch.contiguous_format]
    for i, r in enumerate(ref):
        err = {k: ((v[i] - r).abs().max() / r.abs().max()).item() for k, v in results.items() if k[0] == "bf16"}
        assert err["bf16", CL] <= 2 * err["bf16", torch.contiguous_format] + 0.01, (i, err)
