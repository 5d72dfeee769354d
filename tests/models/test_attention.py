"""rvq's attention: the matmul form (CPU, bf16, short sequences) computes SDPA's function."""

import pytest
import torch
import torch.nn.functional as F

from rvq_cli.models.attention import MATMUL_MAX_TOKENS, attention


def _qkv(n: int, dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, n, 16, generator=g).to(dtype).requires_grad_() for _ in range(3)]


@pytest.mark.parametrize("n", [5, MATMUL_MAX_TOKENS])
def test_matmul_form_in_bf16_agrees_with_sdpa_in_float64(n):
    q, k, v = _qkv(n, torch.bfloat16)
    grad = torch.randn(2, 3, n, 16, generator=torch.Generator().manual_seed(1))
    out = attention(q, k, v)
    out.backward(grad.bfloat16())
    got = [out, q.grad, k.grad, v.grad]
    r = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = F.scaled_dot_product_attention(*r)
    ref.backward(grad.double())
    for a, b in zip(got, [ref, *(t.grad for t in r)], strict=True):
        assert a.dtype == torch.bfloat16
        scale = b.abs().max().item()
        assert (a.double() - b).abs().max().item() <= 0.03 * scale  # a few bf16 roundings


def test_dropout_acts_on_the_attention_weights():
    # with v the identity the output rows are the attention weights themselves: dropout zeroes
    # some of them and scales the rest by 1 / (1 - p), as SDPA's dropout_p does
    torch.manual_seed(0)
    n = 8
    q, k = (torch.randn(1, 1, n, n).bfloat16() for _ in range(2))
    v = torch.eye(n).bfloat16().view(1, 1, n, n)
    kept = attention(q, k, v)
    dropped = attention(q, k, v, dropout_p=0.5)
    zeroed = dropped == 0
    assert zeroed.any() and not zeroed.all()
    torch.testing.assert_close(dropped[~zeroed], (2 * kept)[~zeroed], rtol=1e-2, atol=0)


def test_fp32_and_long_sequences_take_sdpa_exactly():
    for n, dtype in ((7, torch.float32), (MATMUL_MAX_TOKENS + 1, torch.bfloat16)):
        q, k, v = (t.detach() for t in _qkv(n, dtype))
        assert torch.equal(attention(q, k, v), F.scaled_dot_product_attention(q, k, v))
