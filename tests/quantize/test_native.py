"""The C loops for short rows (rvq_cli/native/lowdim.c) against the torch kernels they
stand in for, on every D they cover, every γ and the degenerate rows (to 1e-4 relative: torch sums
some row lengths in another order, and rows near a fallback threshold amplify that); the library's
build, cache and fallback when it cannot be built."""

import os
import stat

import pytest
import torch

from rvq_cli import native as build
from rvq_cli.quantize import POINTWISE, get_estimator, set_compile
from rvq_cli.quantize.estimators import get_compile, native
from rvq_cli.quantize.estimators.kernels import reflection_vjp_kernel, rotation_vjp_kernel, run_kernel


@pytest.fixture
def c_loops():
    """Skip where the library cannot be built here (the fallback tests below run anyway)."""
    if native.status() != "in use":
        pytest.skip(f"no C loops here: {native.status()}")

GAMMAS = [(0, 0.0), (1, 0.0), (2, 0.0), (3, 0.37), (4, 0.0)]  # codes of kernels.rotation_vjp_kernel


def rows(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random rows with every degenerate case planted: zero e, zero q, antiparallel, parallel,
    nearly antiparallel, a nan and an inf in e, a tiny q, q = e (the floor of γ = 1/(8‖q − e‖²)),
    nearly parallel (the reflection's fallback)."""
    gen = torch.Generator().manual_seed(seed)
    e, q, g = (torch.randn(n, d, generator=gen) for _ in range(3))
    e[0] = 0
    q[1] = 0
    q[2] = -e[2]
    q[3] = 2 * e[3]
    q[4] = -e[4] + 1e-3 * torch.randn(d, generator=gen)
    e[5, 0] = float("nan")
    e[6, -1] = float("inf")
    q[7] = 1e-7
    q[8] = e[8]
    q[9] = e[9] + 1e-3 * torch.randn(d, generator=gen)
    return e, q, g


@pytest.fixture
def mode():
    previous = get_compile()
    yield set_compile
    set_compile(previous)


@pytest.mark.parametrize("d", range(1, native.MAX_DIM + 1))
def test_c_rotation_equals_torch_kernel(d, c_loops):
    e, q, g = rows(300, d, seed=d)
    for code, const in GAMMAS:
        for tangent in (False, True):
            want = rotation_vjp_kernel(e, q, g, code, const, tangent)
            got = native.rotation_vjp(e, q, g, code, const, tangent)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, equal_nan=True)
            assert torch.equal(got.isnan(), want.isnan())


@pytest.mark.parametrize("d", range(1, native.MAX_DIM + 1))
def test_c_reflection_equals_torch_kernel(d, c_loops):
    e, q, g = rows(300, d, seed=10 + d)
    torch.testing.assert_close(native.reflection_vjp(e, q, g), reflection_vjp_kernel(e, q, g), rtol=1e-4, atol=1e-5,
                               equal_nan=True)


@pytest.mark.parametrize("d", [3, 5, 8])  # by rows; tiles with unrolled and plain transposes
def test_threads_split_rows_without_changing_a_value(d, monkeypatch, c_loops):
    e, q, g = rows(1001, d, seed=0)  # chunks of 250 rows: tiles that do not line up with them
    whole = native.rotation_vjp(e, q, g, 0, 0.0)
    monkeypatch.setattr(native, "_CHUNK_ROWS", 250)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert torch.equal(native.rotation_vjp(e, q, g, 0, 0.0).nan_to_num(), whole.nan_to_num())


def test_non_contiguous_gradient(c_loops):
    e, q, _ = rows(64, 4, seed=1)
    g = torch.ones(1, 1).expand(64, 4)  # what autograd hands back from a sum(): stride 0
    torch.testing.assert_close(native.rotation_vjp(e, q, g, 0, 0.0), rotation_vjp_kernel(e, q, g.contiguous(), 0, 0.0),
                               equal_nan=True)


def test_which_tensors_go_to_c(c_loops):
    e, q, g = rows(16, 3, seed=2)
    assert native.supports(e, q, g)
    assert not native.supports(e.double(), q.double(), g.double())  # fp64 stays in torch
    wide = torch.randn(8, native.MAX_DIM + 1)
    assert not native.supports(wide, wide, wide)
    assert not native.supports(e, q[:4], g)
    assert not native.supports(e.requires_grad_(), q, g)  # torch's kernel would build a graph
    with torch.no_grad():
        assert native.supports(e, q, g)
    assert not native.supports(e.detach(), q, torch._neg_view(g))  # a pending negation


@pytest.mark.parametrize("name", POINTWISE)
def test_estimators_in_c_equal_eager(name, mode, c_loops):
    """Through the estimators: the default mode (C for these rows) gives the eager gradients."""
    gen = torch.Generator().manual_seed(3)
    e, q, g = (torch.randn(4, 5, 3, generator=gen) for _ in range(3))
    est = get_estimator(name)
    grads = {}
    for m in ("never", "auto"):
        mode(m)
        x = e.clone().requires_grad_(True)
        est(x, q).backward(g)
        grads[m] = x.grad
    torch.testing.assert_close(grads["auto"], grads["never"], rtol=1e-4, atol=1e-5)


def test_run_kernel_uses_c_only_in_auto_mode(mode, monkeypatch, c_loops):
    calls = []
    real = native.rotation_vjp
    monkeypatch.setitem(run_kernel.__globals__["_IN_C"], rotation_vjp_kernel,
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    e, q, g = rows(16, 3, seed=4)
    for m in ("auto", "never"):
        mode(m)
        run_kernel(rotation_vjp_kernel, e, q, g, gamma_code=0, gamma_const=0.0)
    assert calls == [1]


@pytest.fixture
def fresh_library(tmp_path, monkeypatch):
    """native.library() resolved anew with the cache in tmp_path, and again afterwards."""
    monkeypatch.setenv("RVQ_CACHE", str(tmp_path))
    build.library.cache_clear()
    yield tmp_path
    monkeypatch.undo()
    build.library.cache_clear()


def test_build_goes_to_the_cache_once_and_again_when_damaged(fresh_library, monkeypatch, c_loops):
    lib = native.library()
    built = list((fresh_library / "native").glob("rvq-native-*.so"))
    assert lib is not None and len(built) == 1
    mtime = built[0].stat().st_mtime_ns
    build.library.cache_clear()
    assert native.library() is not None
    assert built[0].stat().st_mtime_ns == mtime  # loaded, not rebuilt

    # a file in the cache that does not load is built again (here by copying the first build)
    built = built[0]
    good = built.read_bytes()
    built.unlink()  # a new file in its place (the loaded one stays mapped in this process)
    built.write_bytes(b"not a library")
    real, loads, builds = build._load, [], []

    def load(path):  # this process has the name loaded already: dlopen would hand back that copy
        loads.append(path.read_bytes()[:4])
        if len(loads) == 1:
            raise OSError("invalid ELF header")
        return real(path)

    monkeypatch.setattr(build, "_load", load)
    monkeypatch.setattr(build, "_build", lambda cc, out: builds.append(out) or out.write_bytes(good) and "")
    build.library.cache_clear()
    assert native.library() is not None
    assert loads == [b"not ", good[:4]] and builds == [built] and built.read_bytes() == good


def test_no_compiler_means_torch_kernels(fresh_library, monkeypatch):
    monkeypatch.setenv("CC", str(fresh_library / "no-such-cc"))
    assert native.library() is None
    assert "did not run" in native.status()
    e, q, g = rows(16, 3, seed=5)
    assert not native.supports(e, q, g)
    out = run_kernel(rotation_vjp_kernel, e, q, g, gamma_code=0, gamma_const=0.0)  # torch's kernel instead
    torch.testing.assert_close(out, rotation_vjp_kernel(e, q, g, 0, 0.0), equal_nan=True)


def test_failed_build_leaves_nothing_in_the_cache(fresh_library, monkeypatch):
    cc = fresh_library / "bad-cc"
    cc.write_text("#!/bin/sh\n[ \"$1\" = --version ] && echo 'bad-cc 1.0' && exit 0\n"
                  "echo 'bad-cc: cannot build' >&2\nexit 1\n")
    cc.chmod(cc.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("CC", str(cc))
    assert native.library() is None
    assert "cannot build" in native.status()
    assert not list((fresh_library / "native").glob("*"))


def test_turned_off_by_environment(fresh_library, monkeypatch):
    monkeypatch.setenv("RVQ_NATIVE", "0")
    assert native.library() is None
    assert "RVQ_NATIVE" in native.status()
    assert not os.path.exists(fresh_library / "native")


def test_unwritable_cache_means_torch_kernels(fresh_library, monkeypatch):
    blocker = fresh_library / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("RVQ_CACHE", str(blocker))  # its native/ folder cannot be made
    assert native.library() is None
    assert "RVQ_CACHE" in native.status()
