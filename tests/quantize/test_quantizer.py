"""VectorQuantizer: shapes, bit-exact outputs, lookup, metrics, EMA / learned updates, autocast,
fallbacks, dead codes, k-means init, argument checks, state_dict, and torch.distributed."""

import os

os.environ.setdefault("RVQ_COMPILE", "never")

import copy
import math
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from rvq_cli.quantize import ESTIMATORS, POINTWISE, VectorQuantizer, nearest_codes
from rvq_cli.quantize.codebook import INITS, LOOKUPS, kmeans
from rvq_cli.quantize.quantizer import UPDATES

EST = list(ESTIMATORS)
POINT = list(POINTWISE)
HARD = [name for name in EST if ESTIMATORS[name].kind != "stochastic"]  # forward value = the code in training too


def rand(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def make_vq(dim=8, k=16, seed=0, **kw):
    torch.manual_seed(seed)
    return VectorQuantizer(dim, k, **kw)


def flat_e(vq, z):
    """The layer's (N, d) lookup inputs, computed independently: channel-last rows, projected,
    normalised for cosine lookup."""
    with torch.no_grad():
        x = z.float().movedim(1, -1).reshape(-1, vq.dim)
        e = vq.project_in(x)
        return F.normalize(e, dim=-1) if vq.lookup == "cosine" else e


def set_codebook(vq, codes):
    with torch.no_grad():
        vq.codebook.copy_(codes)
        if vq.embed_sum is not None:
            vq.embed_sum.copy_(codes)


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize("shape", [(2, 8, 4, 5), (2, 8, 3, 4, 5), (3, 8, 7), (1, 8, 1, 1)])
@pytest.mark.parametrize("codebook_dim", [None, 4])
def test_output_shapes(shape, codebook_dim):
    vq = make_vq(codebook_dim=codebook_dim)
    z = rand(*shape)
    out = vq(z)
    assert out.quantized.shape == z.shape and out.quantized.dtype == z.dtype
    assert out.indices.shape == (shape[0], *shape[2:]) and out.indices.dtype == torch.int64
    assert out.losses.commitment.shape == () and out.losses.codebook.shape == () and out.loss.shape == ()
    for v in vars(out.metrics).values():
        assert v.shape == () and not v.requires_grad
    assert set(out.metrics.as_dict()) == {"usage", "perplexity", "quant_error", "fallbacks", "restarted", "obtuse",
                                             "latent_power"}


# ---------------------------------------------------------------- bit-exact output and lookup


@pytest.mark.parametrize("codebook_dim", [None, 4])
@pytest.mark.parametrize("update", UPDATES)
@pytest.mark.parametrize("lookup", LOOKUPS)
@pytest.mark.parametrize("estimator", EST)
def test_quantized_is_codes_bit_for_bit_eval(estimator, lookup, update, codebook_dim):
    vq = make_vq(estimator=estimator, lookup=lookup, update=update, codebook_dim=codebook_dim).eval()
    z = rand(2, 8, 5, 3, seed=1)
    out = vq(z)
    assert torch.equal(out.quantized, vq.indices_to_codes(out.indices))


@pytest.mark.parametrize("codebook_dim", [None, 4])
@pytest.mark.parametrize("update", UPDATES)
@pytest.mark.parametrize("lookup", LOOKUPS)
@pytest.mark.parametrize("estimator", HARD)
def test_quantized_is_codes_bit_for_bit_train(estimator, lookup, update, codebook_dim):
    vq = make_vq(estimator=estimator, lookup=lookup, update=update, codebook_dim=codebook_dim).train()
    z = rand(2, 8, 5, 3, seed=1).requires_grad_(True)
    for _ in range(2):  # the second forward runs on a codebook the first one updated
        before = copy.deepcopy(vq).eval()  # codes as they were at lookup time
        out = vq(z)
        assert torch.equal(out.quantized, before.indices_to_codes(out.indices))
    if update == "ema":
        assert not torch.equal(vq.codebook, make_vq(lookup=lookup, codebook_dim=codebook_dim).codebook)


@pytest.mark.parametrize("codebook_dim", [None, 4])
@pytest.mark.parametrize("lookup", LOOKUPS)
@pytest.mark.parametrize("shape", [(2, 8, 6, 5), (1, 8, 2, 3, 4), (3, 8, 11)])
def test_indices_are_nearest_codes(lookup, codebook_dim, shape):
    vq = make_vq(lookup=lookup, codebook_dim=codebook_dim, k=32).eval()
    z = rand(*shape, seed=2)
    out = vq(z)
    expect = nearest_codes(flat_e(vq, z), vq.codes(), lookup).reshape(out.indices.shape)
    assert torch.equal(out.indices, expect)
    assert out.indices.unique().numel() > 1  # a real search, not one code for everything


def test_indices_follow_channel_first_layout():
    """Spatial position (b, t, h, w) is quantized from z[b, :, t, h, w]."""
    vq = make_vq(dim=2, k=4).eval()
    set_codebook(vq, torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]))
    z = torch.zeros(2, 2, 3, 4)
    expect = torch.randint(0, 4, (2, 3, 4), generator=torch.Generator().manual_seed(0))
    z.copy_(vq.codebook[expect].movedim(-1, 1) * 0.9)
    out = vq(z)
    assert torch.equal(out.indices, expect)
    assert torch.equal(out.quantized, vq.codebook[expect].movedim(-1, 1))


# ---------------------------------------------------------------- metrics and losses


TINY_CODES = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
TINY_E = torch.tensor([[0.9, 0.1], [1.2, -0.1], [0.1, 0.8], [-0.7, 0.2], [0.8, 0.3]])  # codes 0 0 1 2 0


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("update", UPDATES)
def test_metrics_on_tiny_example(update, training):
    beta = 0.25
    vq = make_vq(dim=2, k=4, update=update, beta=beta).train(training)
    set_codebook(vq, TINY_CODES)
    z = TINY_E.t().reshape(1, 2, 5)  # (B=1, D=2, T=5)
    out = vq(z)

    assert out.indices.tolist() == [[0, 0, 1, 2, 0]]
    q = TINY_CODES[[0, 0, 1, 2, 0]]
    sq = sum((float(TINY_E[i, j]) - float(q[i, j])) ** 2 for i in range(5) for j in range(2)) / 10
    p = [3 / 5, 1 / 5, 1 / 5]
    perplexity = math.exp(-sum(pi * math.log(pi) for pi in p))

    m = out.metrics
    assert float(m.usage) == pytest.approx(0.75)
    assert float(m.perplexity) == pytest.approx(perplexity, rel=1e-6)
    assert float(m.quant_error) == pytest.approx(sq, rel=1e-6)
    assert float(m.fallbacks) == 0.0 and float(m.restarted) == 0.0
    losses = {k: float(v.detach()) for k, v in vars(out.losses).items()}
    assert losses["commitment"] == pytest.approx(beta * sq, rel=1e-6)
    assert losses["codebook"] == pytest.approx(sq if update == "learned" else 0.0, rel=1e-6)
    assert float(out.loss.detach()) == pytest.approx(losses["commitment"] + losses["codebook"])


def test_perplexity_of_uniform_usage_is_number_of_codes_used():
    vq = make_vq(dim=2, k=4).eval()
    set_codebook(vq, TINY_CODES)
    z = torch.cat([TINY_CODES, TINY_CODES[:2]]).t().reshape(1, 2, 6)  # codes 0,1 twice; 2,3 once
    m = vq(z).metrics
    assert float(m.usage) == 1.0
    assert float(m.quant_error) == 0.0
    p = torch.tensor([2, 2, 1, 1]) / 6
    assert float(m.perplexity) == pytest.approx(math.exp(-(p * p.log()).sum().item()), rel=1e-6)
    z4 = TINY_CODES.t().reshape(1, 2, 4)
    assert float(vq(z4).metrics.perplexity) == pytest.approx(4.0, rel=1e-6)


def test_quant_error_is_in_code_space_with_factorised_codes():
    vq = make_vq(dim=8, k=16, codebook_dim=3).eval()
    z = rand(2, 8, 4, 4, seed=3)
    out = vq(z)
    e = flat_e(vq, z)
    q = vq.codes()[out.indices.reshape(-1)]
    torch.testing.assert_close(out.metrics.quant_error, ((e - q) ** 2).mean(), rtol=1e-5, atol=0)
    torch.testing.assert_close(out.losses.commitment, vq.beta * ((e - q) ** 2).mean(), rtol=1e-5, atol=0)


# ---------------------------------------------------------------- EMA update


def hand_ema(codebook, cluster_size, embed_sum, e, idx, decay, eps):
    k = codebook.shape[0]
    counts = torch.bincount(idx, minlength=k).double()
    sums = torch.zeros(k, e.shape[1], dtype=torch.float64).index_add_(0, idx, e.double())
    size = decay * cluster_size.double() + (1 - decay) * counts
    embed = decay * embed_sum.double() + (1 - decay) * sums
    total = size.sum()
    smoothed = (size + eps) / (total + k * eps) * total
    return embed / smoothed[:, None], size, embed


@pytest.mark.parametrize("codebook_dim", [None, 3])
@pytest.mark.parametrize("lookup", LOOKUPS)
def test_ema_update_in_forward_matches_hand_computation(lookup, codebook_dim):
    decay, eps = 0.8, 1e-5
    vq = make_vq(dim=4, k=8, lookup=lookup, codebook_dim=codebook_dim, decay=decay, eps=eps).train()
    for step in range(3):
        z = rand(2, 4, 5, 5, seed=10 + step)
        c0, n0, m0 = vq.codebook.clone(), vq.cluster_size.clone(), vq.embed_sum.clone()
        e = flat_e(vq, z)
        idx = nearest_codes(e, vq.codes(), lookup)
        out = vq(z)
        assert torch.equal(out.indices.reshape(-1), idx)
        codebook, size, embed = hand_ema(c0, n0, m0, e, idx, decay, eps)
        torch.testing.assert_close(vq.cluster_size.double(), size, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(vq.embed_sum.double(), embed, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(vq.codebook.double(), codebook, rtol=1e-5, atol=1e-6)
        assert not torch.equal(vq.codebook, c0)


@pytest.mark.parametrize("update", UPDATES)
@pytest.mark.parametrize("lookup", LOOKUPS)
def test_eval_mode_changes_no_state(update, lookup):
    vq = make_vq(lookup=lookup, update=update, dead_code_threshold=2.0).eval()
    before = {k: v.clone() for k, v in vq.state_dict().items()}
    for seed in range(3):
        out = vq(rand(2, 8, 4, 4, seed=seed))
        assert float(out.metrics.restarted) == 0.0
    after = vq.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k


def test_ema_codebook_gets_no_gradient_and_is_a_buffer():
    vq = make_vq(update="ema").train()
    assert "codebook" not in dict(vq.named_parameters())
    assert "codebook" in dict(vq.named_buffers()) and "embed_sum" in dict(vq.named_buffers())
    z = rand(2, 8, 3, 3).requires_grad_(True)
    out = vq(z)
    (out.quantized.sum() + out.loss).backward()
    assert not vq.codebook.requires_grad and vq.codebook.grad is None
    assert z.grad is not None and torch.isfinite(z.grad).all()


# ---------------------------------------------------------------- learned codebook gradients


def no_grad_(t):
    return t.grad is None or not t.grad.any()


@pytest.mark.parametrize("codebook_dim", [None, 4])
@pytest.mark.parametrize("lookup", LOOKUPS)
@pytest.mark.parametrize("estimator", POINT)
def test_learned_codebook_gets_gradient_from_codebook_loss_only(estimator, lookup, codebook_dim):
    vq = make_vq(estimator=estimator, lookup=lookup, update="learned", codebook_dim=codebook_dim).train()
    assert isinstance(vq.codebook, torch.nn.Parameter)
    z = rand(2, 8, 4, 4, seed=4).requires_grad_(True)
    w = rand(2, 8, 4, 4, seed=5)
    out = vq(z)

    (out.quantized * w).sum().backward(retain_graph=True)  # a reconstruction-like term
    assert no_grad_(vq.codebook)
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0  # via the estimator

    out.losses.commitment.backward(retain_graph=True)
    assert no_grad_(vq.codebook)

    out.losses.codebook.backward()
    g = vq.codebook.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    unused = torch.ones(vq.codebook_size, dtype=torch.bool)
    unused[out.indices.unique()] = False
    assert not g[unused].any()  # only chosen codes are pulled
    assert g[~unused].abs().sum(-1).gt(0).all()


@pytest.mark.parametrize("estimator", POINT)
def test_gradient_to_input_is_g_only_for_ste(estimator):
    """With no projection the STE passes g to z unchanged; the others send a different gradient."""
    vq = make_vq(estimator=estimator).eval()
    z = rand(2, 8, 3, 3, seed=6).requires_grad_(True)
    g = rand(2, 8, 3, 3, seed=7)
    vq(z).quantized.backward(g)
    assert torch.isfinite(z.grad).all()
    assert torch.equal(z.grad, g) == (estimator in ("ste", "ste_raw"))  # ste_raw: ste under euclidean lookup


# ---------------------------------------------------------------- autocast


@pytest.mark.parametrize("codebook_dim", [None, 4])
@pytest.mark.parametrize("update", UPDATES)
@pytest.mark.parametrize("estimator", EST)
def test_bf16_autocast(estimator, update, codebook_dim):
    vq = make_vq(estimator=estimator, update=update, codebook_dim=codebook_dim).train()
    conv = torch.nn.Conv2d(8, 8, 1)
    x = rand(2, 8, 4, 4, seed=8, dtype=torch.bfloat16).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = conv(x)  # bf16 under autocast, as an encoder would produce
        assert z.dtype == torch.bfloat16
        out = vq(z)
        loss = out.quantized.float().square().mean() + out.loss
    assert out.quantized.dtype == torch.bfloat16 and out.quantized.shape == z.shape
    assert torch.isfinite(out.quantized.float()).all()
    assert all(math.isfinite(v) for v in out.metrics.as_dict().values())
    assert math.isfinite(float(loss.detach()))
    loss.backward()
    assert x.grad is not None and x.grad.dtype == torch.bfloat16
    assert torch.isfinite(x.grad.float()).all() and x.grad.float().abs().sum() > 0
    if update == "learned":
        assert torch.isfinite(vq.codebook.grad).all()
    assert torch.isfinite(vq.codebook).all()


def test_bf16_output_is_codes_rounded_to_bf16():
    vq = make_vq().eval()
    z = rand(2, 8, 4, 4, seed=9, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = vq(z)
    assert torch.equal(out.quantized, vq.indices_to_codes(out.indices).to(torch.bfloat16))


# ---------------------------------------------------------------- degenerate rows


@pytest.mark.parametrize("estimator", POINT)
def test_fallbacks_count_zero_rows(estimator):
    vq = make_vq(estimator=estimator, init="normal").eval()  # N(0, 1) codes: no zero vector
    assert vq.codebook.norm(dim=-1).min() > 0.1
    z = rand(2, 8, 4, 4, seed=11)
    zero_rows = [(0, 0, 0), (0, 3, 1), (1, 2, 3), (1, 0, 2)]
    for b, h, w in zero_rows:
        z[b, :, h, w] = 0.0
    z.requires_grad_(True)
    g = rand(2, 8, 4, 4, seed=12)
    out = vq(z)
    expected = 0 if ESTIMATORS[estimator].fallback == "none" else len(zero_rows)
    assert float(out.metrics.fallbacks) == expected
    out.quantized.backward(g)
    assert torch.isfinite(z.grad).all()
    for b, h, w in zero_rows:  # the fallback is the STE gradient
        assert torch.equal(z.grad[b, :, h, w], g[b, :, h, w])


def test_no_fallbacks_on_ordinary_rows():
    vq = make_vq(estimator="rotation", init="normal").eval()
    assert float(vq(rand(4, 8, 8, 8, seed=13)).metrics.fallbacks) == 0.0


# ---------------------------------------------------------------- dead codes and k-means init


@pytest.mark.parametrize("update", UPDATES)
def test_dead_codes_are_restarted_in_training(update):
    thr = 0.9  # cluster_size starts at 1; an unused code decays to 0.8 after one step
    vq = make_vq(dim=4, k=64, update=update, decay=0.8, dead_code_threshold=thr).train()
    z = rand(1, 4, 16, seed=14)  # 16 rows: at most 16 of the 64 codes are used
    e = flat_e(vq, z)
    out = vq(z)
    used = torch.zeros(64, dtype=torch.bool)
    used[out.indices.unique()] = True
    assert float(out.metrics.restarted) == int((~used).sum()) >= 48
    for i in (~used).nonzero().flatten().tolist():
        assert (vq.codebook[i] == e).all(dim=1).any(), f"code {i} is not a row of the batch"
    assert torch.equal(vq.cluster_size[~used], torch.full((int((~used).sum()),), thr))
    assert (vq.cluster_size[used] > thr).all()
    assert torch.isfinite(vq.codebook).all()


def test_no_restart_without_threshold():
    vq = make_vq(dim=4, k=64).train()
    assert float(vq(rand(1, 4, 16, seed=14)).metrics.restarted) == 0.0


@pytest.mark.parametrize("update", UPDATES)
@pytest.mark.parametrize("lookup", LOOKUPS)
def test_kmeans_init_on_first_training_forward(update, lookup):
    vq = make_vq(dim=3, k=4, init="kmeans", update=update, lookup=lookup, kmeans_iters=10)
    assert not bool(vq.initialized) and torch.equal(vq.codebook, torch.zeros(4, 3))
    centres = torch.tensor([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 4.0], [-4.0, -4.0, -4.0]])
    g = torch.Generator().manual_seed(0)
    x = torch.cat([c + 0.2 * torch.randn(50, 3, generator=g) for c in centres])  # (200, 3)
    z = x.t().reshape(1, 3, 200)

    vq.eval()(z)  # eval never initialises
    assert not bool(vq.initialized) and torch.equal(vq.codebook, torch.zeros(4, 3))

    torch.manual_seed(7)
    out = vq.train()(z)
    assert bool(vq.initialized)
    assert vq.codebook.abs().sum(-1).gt(0).all() and torch.isfinite(vq.codebook).all()
    assert float(out.metrics.usage) > 0.25  # the lookup already used the k-means codes
    torch.manual_seed(7)  # the same draw of starting rows
    centroids = kmeans(flat_e(vq, z), 4, 10, lookup)
    if update == "learned":  # nothing else moves a learned codebook in forward
        assert torch.equal(vq.codebook, centroids)
    else:  # one EMA step on top of the centroids
        assert torch.equal(vq.codebook, vq.embed_sum / ((vq.cluster_size + vq.eps) / (
            vq.cluster_size.sum() + 4 * vq.eps) * vq.cluster_size.sum())[:, None])
        torch.testing.assert_close(vq.codes(), centroids, rtol=0, atol=0.1)  # codes(): normalised for cosine

    c = vq.codebook.clone()
    torch.manual_seed(8)
    vq(z)  # no second k-means
    if update == "learned":
        assert torch.equal(vq.codebook, c)


def test_kmeans_init_state_survives_state_dict():
    vq = make_vq(dim=3, k=4, init="kmeans").train()
    vq(rand(1, 3, 64, seed=1))
    fresh = make_vq(dim=3, k=4, init="kmeans", seed=5)
    fresh.load_state_dict(vq.state_dict())
    assert bool(fresh.initialized)
    z = rand(1, 3, 64, seed=2)
    torch.manual_seed(0)
    a = vq(z)
    torch.manual_seed(0)
    b = fresh.train()(z)  # a k-means here would draw other rows and give another codebook
    assert torch.equal(a.indices, b.indices) and torch.equal(fresh.codebook, vq.codebook)


# ---------------------------------------------------------------- argument checks


@pytest.mark.parametrize(
    "kwargs, names",
    [
        (dict(estimator="straight"), EST),
        (dict(lookup="dot"), LOOKUPS),
        (dict(update="sgd"), UPDATES),
        (dict(init="xavier"), INITS),
        (dict(decay=1.0), ["[0, 1)"]),
        (dict(decay=-0.1), ["[0, 1)"]),
    ],
)
def test_invalid_constructor_arguments(kwargs, names):
    with pytest.raises(ValueError) as err:
        VectorQuantizer(8, 16, **kwargs)
    for name in names:
        assert name in str(err.value)
    bad = next(iter(kwargs.values()))
    assert str(bad) in str(err.value)


def test_decay_zero_is_valid():
    """decay 0 keeps nothing of the past: one EMA update sets cluster_size to this batch's counts n_k,
    embed_sum to its per-code sums, and each code to its assigned mean under the Laplace smoothing,
    c_k = Σx / ((n_k + ε) / (n + Kε) · n): within ~ε of the plain mean for a used code, and zero for
    a code no row chose (its sum is zero)."""
    eps, k = 1e-5, 64
    vq = make_vq(dim=4, k=k, decay=0.0, eps=eps).train()
    vq(rand(2, 4, 5, 5, seed=3))  # a first update: the state before must not matter
    z = rand(2, 4, 5, 5, seed=4)
    e = flat_e(vq, z).double()
    idx = nearest_codes(e.float(), vq.codes(), vq.lookup)
    assert torch.equal(vq(z).indices.reshape(-1), idx)
    n = e.shape[0]
    counts = torch.bincount(idx, minlength=k).double()
    sums = torch.zeros(k, 4, dtype=torch.float64).index_add_(0, idx, e)
    used = counts > 0
    assert 1 < int(used.sum()) < k  # 50 rows, 64 codes: some used, some not
    assert torch.equal(vq.cluster_size.double(), counts)
    torch.testing.assert_close(vq.embed_sum.double(), sums, rtol=1e-6, atol=1e-6)
    want = sums / ((counts + eps) / (n + k * eps) * n)[:, None]
    torch.testing.assert_close(vq.codebook.double(), want, rtol=1e-5, atol=1e-7)
    means = sums[used] / counts[used, None]
    torch.testing.assert_close(vq.codebook.double()[used], means, rtol=1e-4, atol=1e-6)
    assert torch.equal(vq.codebook[~used], torch.zeros(k - int(used.sum()), 4))


@pytest.mark.parametrize("shape", [(2, 7, 4, 4), (2, 8), (8,), (2, 4, 8, 8)])
def test_wrong_input_shape(shape):
    vq = make_vq()
    with pytest.raises(ValueError, match="expected input"):
        vq(rand(*shape))


@pytest.mark.parametrize("bad", [[[0, 16]], [[-1, 3]], [[100]]])
def test_indices_out_of_range(bad):
    vq = make_vq(k=16)
    with pytest.raises(ValueError, match="out of range"):
        vq.indices_to_codes(torch.tensor(bad))


def test_indices_must_be_integers():
    vq = make_vq(k=16)
    with pytest.raises(ValueError, match="integer"):
        vq.indices_to_codes(torch.tensor([[0.0, 1.0]]))
    vq.indices_to_codes(torch.tensor([[0, 15]], dtype=torch.int32))  # any integer dtype is fine


# ---------------------------------------------------------------- state_dict


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(update="learned"),
        dict(lookup="cosine", codebook_dim=4),
        dict(update="learned", lookup="cosine", codebook_dim=4, estimator="ste"),
        dict(init="kmeans", dead_code_threshold=0.5),
    ],
)
def test_state_dict_round_trip(kw):
    vq = make_vq(**kw).train()
    for seed in range(3):  # move the state away from its initial values
        vq(rand(2, 8, 4, 4, seed=seed))
    fresh = make_vq(seed=123, **kw)
    fresh.load_state_dict(vq.state_dict())
    z = rand(2, 8, 4, 4, seed=99)
    for training in (False, True):  # eval outputs, then a training step from the same state
        a, b = vq.train(training)(z), fresh.train(training)(z)
        assert torch.equal(a.quantized, b.quantized)
        assert torch.equal(a.indices, b.indices)
        assert torch.equal(a.loss, b.loss)
        assert a.metrics.as_dict() == b.metrics.as_dict()
    if "dead_code_threshold" not in kw:  # restarts draw random rows
        for k, v in vq.state_dict().items():
            assert torch.equal(v, fresh.state_dict()[k]), k


# ---------------------------------------------------------------- torch.distributed

DIST_KW = dict(dim=4, codebook_size=16, estimator="rotation", update="ema", decay=0.8)
DIST_STEPS = 3


def dist_batches():
    return [rand(4, 4, 3, 3, seed=50 + s) for s in range(DIST_STEPS)]  # 36 rows per batch


def _dist_worker(rank, world_size, init_file, out_dir):
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=60))
    try:
        torch.manual_seed(0)
        vq = VectorQuantizer(**DIST_KW).train()
        half = 4 // world_size
        usage, indices = [], []
        for z in dist_batches():
            out = vq(z[rank * half : (rank + 1) * half])
            usage.append(out.metrics.usage.clone())
            indices.append(out.indices.clone())
        torch.save({"codebook": vq.codebook.clone(), "cluster_size": vq.cluster_size.clone(),
                    "usage": torch.stack(usage), "indices": indices}, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_distributed_ema_matches_single_process(tmp_path):
    world = 2
    ctx = mp.spawn(_dist_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=False)
    deadline = time.monotonic() + 60
    try:
        while not ctx.join(timeout=1):
            assert time.monotonic() < deadline, "distributed workers timed out"
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(world))

    torch.manual_seed(0)
    single = VectorQuantizer(**DIST_KW).train()
    usage, indices = [], []
    for z in dist_batches():
        out = single(z)
        usage.append(out.metrics.usage)
        indices.append(out.indices)

    assert torch.equal(r0["codebook"], r1["codebook"])  # ranks agree exactly
    assert torch.equal(r0["cluster_size"], r1["cluster_size"])
    torch.testing.assert_close(r0["codebook"], single.codebook, rtol=0, atol=1e-5)
    torch.testing.assert_close(r0["cluster_size"], single.cluster_size, rtol=0, atol=1e-5)
    torch.manual_seed(0)
    assert not torch.allclose(single.codebook, VectorQuantizer(**DIST_KW).codebook, atol=1e-3)  # it trained
    for s in range(DIST_STEPS):  # each rank chose the codes the single process chose for its half
        assert torch.equal(torch.cat([r0["indices"][s], r1["indices"][s]]), indices[s])
    assert torch.equal(r0["usage"], torch.stack(usage))  # metrics are over the union batch
    assert torch.equal(r1["usage"], r0["usage"])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cast_layer_keeps_fp32_statistics_and_runs(dtype):
    vq = VectorQuantizer(8, 16, codebook_dim=4).to(dtype)
    assert vq.codebook.dtype == vq.embed_sum.dtype == vq.cluster_size.dtype == torch.float32
    z = torch.randn(2, 8, 4, 4).to(dtype)
    out = vq(z)
    assert out.quantized.dtype == dtype and torch.isfinite(out.quantized.float()).all()
    assert vq.cluster_size.dtype == torch.float32
    vq.eval()
    out = vq(z)
    assert torch.equal(vq.indices_to_codes(out.indices, dtype=dtype), out.quantized)


@pytest.mark.parametrize("estimator", ["ste", "rotation", "reflection"])
def test_gradient_diagnostics_match_an_independent_backward(estimator):
    """cos(grad_e, g) through the estimator alone (not the commitment loss) and the obtuse fraction."""
    from rvq_cli.quantize import get_estimator

    torch.manual_seed(0)
    vq = VectorQuantizer(8, 32, estimator=estimator, update="learned", init="normal")  # codes fixed until a step
    z = torch.randn(4, 8, 5, 5, requires_grad=True)
    out = vq(z)
    g = torch.randn_like(out.quantized)
    ((out.quantized * g).sum() + out.loss).backward()  # the commitment loss also reaches z
    e = z.detach().movedim(1, -1).reshape(-1, 8).requires_grad_()
    q = vq.codes()[out.indices.reshape(-1)].detach()
    g_rows = g.movedim(1, -1).reshape(-1, 8)
    get_estimator(estimator)(e, q).backward(g_rows)
    expected = torch.nn.functional.cosine_similarity(e.grad, g_rows, dim=-1).mean().item()
    assert vq.gradient_cosine() == pytest.approx(expected, abs=1e-6)
    assert vq.gradient_cosine() is None  # read once
    assert out.metrics.obtuse.item() == pytest.approx(((e.detach() * q).sum(-1) < 0).float().mean().item())
    assert out.metrics.latent_power.item() == pytest.approx(e.detach().pow(2).mean().item(), rel=1e-5)
    if estimator == "ste":
        assert expected == pytest.approx(1.0)
