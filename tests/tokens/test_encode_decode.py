"""`rvq encode` / `rvq decode` end to end on a real (3-step) tokenizer and real shards: the token
format, tokens equal to the model's, bit-exact round trips, resume without duplicates, the
refusals (wrong tokenizer, damaged or pickled tokens, bad checkpoints), and two-process encode.

CLI calls that check process-level behaviour (DataLoader workers, torchrun, a clean exit) run
``rvq`` as a subprocess; the many refusal cases call ``rvq_cli.cli.main`` in this process (the
same code path from argv to exit status and stderr, without ~6 s of imports per call).
"""

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

os.environ.setdefault("RVQ_COMPILE", "never")

import numpy as np
import pytest
import torch
from PIL import Image

from rvq_cli.config import load_recipe
from rvq_cli.data import write_shards
from rvq_cli.data.images import center_crop, decode_rgb, to_batch, to_uint8
from rvq_cli.quantize import VectorQuantizer
from rvq_cli.quantize.codebook import nearest_codes
from rvq_cli.runs import load_tokenizer
from rvq_cli.tokens import FORMAT, encode_dataset
from rvq_cli.tokens.decode import decode_tokens
from rvq_cli.training import train
from tiny import TINY, png

RVQ = shutil.which("rvq") or os.path.join(os.path.dirname(sys.executable), "rvq")
ENV = dict(os.environ, RVQ_COMPILE="never")

SIZE, GRID, K = 16, [8, 8], 16
N_SHARDS, PER_SHARD = 4, 5


def source_sample(i):
    s = {"__key__": f"img{i:03d}", "png": png(i), "json": {"index": i}}
    if i % 2 == 0:  # half the samples carry a label
        s["cls"] = i % 3
    return s


class Touch:
    """Unpickling this creates ``path``: proof that a file was (or was not) unpickled."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "a"))


def rvq(*args, inprocess=False, timeout=300):
    """Run the rvq command: a real subprocess, or ``rvq_cli.cli.main`` with this argv here."""
    args = [str(a) for a in args]
    if not inprocess:
        return subprocess.run([RVQ, *args], check=False, capture_output=True, text=True, timeout=timeout, env=ENV)
    from rvq_cli import cli

    out, err, code = io.StringIO(), io.StringIO(), 0
    with redirect_stdout(out), redirect_stderr(err), mock.patch.object(sys, "argv", ["rvq", *args]):
        try:
            cli.main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def assert_user_error(res, *fragments):
    """Exit 2, a one-line ``error: ...`` on stderr naming ``fragments``, no traceback."""
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert res.stderr.startswith("error:"), res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    for f in fragments:
        assert f in res.stderr, (f, res.stderr)


def read_tokens(out, shards=None):
    """[(key, tokens, meta)] of token shards, read with tarfile and np.load(allow_pickle=False)."""
    out = Path(out)
    names = shards if shards is not None else sorted(p.name for p in out.glob("tokens-*.tar"))
    rows = []
    for name in names:
        fields = {}
        with tarfile.open(out / name) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                fields.setdefault(key, {})[ext] = tar.extractfile(m).read()
        for key, f in fields.items():
            assert set(f) == {"tokens.npy", "json"}, (name, key, set(f))
            rows.append((key, np.load(io.BytesIO(f["tokens.npy"]), allow_pickle=False), json.loads(f["json"])))
    return rows


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Source shards (4 × 5 images of 20×20), two tiny trained runs (seeds 0 and 1), model A."""
    root = tmp_path_factory.mktemp("tokens")
    samples = [source_sample(i) for i in range(N_SHARDS * PER_SHARD)]
    write_shards(samples, root / "src", max_count=PER_SHARD)
    pattern = str(root / "src" / f"shard-{{000000..{N_SHARDS - 1:06d}}}.tar")
    runs = []
    for seed in (0, 1):
        path = root / f"tiny{seed}.yaml"
        path.write_text(TINY.format(train=pattern, val=root / "src" / "shard-000000.tar", out=root / f"run{seed}"))
        runs.append(train(load_recipe(path, [f"train.seed={seed}"]), quiet=True).run_dir)
    tok = load_tokenizer(runs[0])
    crops = [center_crop(decode_rgb(s["png"]), SIZE) for s in samples]
    return SimpleNamespace(root=root, pattern=pattern, run=runs[0], run_b=runs[1], tok=tok, model=tok.model,
                           keys=[s["__key__"] for s in samples], samples=samples, crops=crops)


@pytest.fixture(scope="module")
def encoded(world):
    """`rvq encode` of the shard pattern with two decoding workers (a real subprocess)."""
    out = world.root / "enc"
    res = rvq("encode", world.run, world.pattern, out, "--num-workers", "2", "-q")
    return SimpleNamespace(out=out, res=res)


# 1 -----------------------------------------------------------------------------------------


def test_cli_encode_writes_manifest_and_token_samples(world, encoded):
    res, out = encoded.res, encoded.out
    assert res.returncode == 0, res.stderr + res.stdout
    assert "20 samples" in res.stdout and "Traceback" not in res.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert m["format"] == FORMAT
    assert m["tokenizer"] == load_tokenizer(world.run).tokenizer_id == world.tok.tokenizer_id
    assert m["grid"] == GRID and m["dtype"] == "uint16" and m["codebook_size"] == K
    assert m["count"] == len(world.keys) and m["image_size"] == SIZE and m["step"] == 3
    assert m["skipped"] == [] and m["classes"] is None
    assert len(m["shards"]) == N_SHARDS
    assert all((out / s).is_file() for s in m["shards"])
    assert sorted(p.name for p in out.glob("*.tar")) == sorted(m["shards"])  # nothing unlisted
    assert (out / "skipped.txt").read_text() == ""

    rows = read_tokens(out, m["shards"])
    keys = [k for k, _, _ in rows]
    assert len(keys) == len(set(keys)), "duplicate keys"
    assert sorted(keys) == sorted(world.keys)
    by_key = {s["__key__"]: s for s in world.samples}
    for key, tokens, meta in rows:
        assert tokens.dtype == np.uint16 and tokens.shape == tuple(GRID)
        assert int(tokens.max()) < K
        src = by_key[key]
        assert meta["key"] == key and meta["tokenizer"] == m["tokenizer"]
        assert meta["grid"] == GRID and meta["codebook_size"] == K
        assert meta.get("cls") == src.get("cls"), key  # present exactly when the source had one
        assert ("cls" in meta) == ("cls" in src)
        assert meta["source"] == src["json"]


# 2 -----------------------------------------------------------------------------------------


def test_tokens_equal_model_encode_of_center_crops(world, encoded):
    got = {k: t for k, t, _ in read_tokens(encoded.out)}
    for i in range(0, len(world.keys), PER_SHARD):  # one forward per source shard, as encode batches them
        x = to_batch(world.crops[i : i + PER_SHARD])
        want = world.model.encode(x).numpy()
        for key, w in zip(world.keys[i : i + PER_SHARD], want):
            np.testing.assert_array_equal(got[key].astype(np.int64), w, err_msg=key)


# 3 -----------------------------------------------------------------------------------------


def test_decode_of_encode_is_the_forward_reconstruction_bit_for_bit(world):
    model = world.model
    assert not model.training
    x = to_batch(world.crops)
    with torch.no_grad():
        rec = model(x).reconstruction
    decoded = decode_tokens(model, model.encode(x))
    assert torch.equal(decoded, rec)
    # uint16 numpy tokens (what the shards hold) decode the same
    assert torch.equal(decode_tokens(model, model.encode(x).numpy().astype(np.uint16)), rec)


def test_cli_decode_pngs_equal_saved_forward_reconstruction(world, encoded, tmp_path):
    bs = 8
    res = rvq("decode", world.run, encoded.out, tmp_path / "png", "--batch-size", bs, "-q")
    assert res.returncode == 0, res.stderr + res.stdout
    assert f"{len(world.keys)} images decoded" in res.stdout
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == sorted(f"{k}.png" for k in world.keys)
    # decode reads the shards in manifest order (= source order): the same batches of 8
    x = to_batch(world.crops)
    with torch.no_grad():
        rec = torch.cat([world.model(x[i : i + bs]).reconstruction for i in range(0, len(x), bs)])
    want = to_uint8(rec).permute(0, 2, 3, 1).numpy()
    for key, w in zip(world.keys, want):
        with Image.open(tmp_path / "png" / f"{key}.png") as im:
            assert im.mode == "RGB"
            np.testing.assert_array_equal(np.asarray(im), w, err_msg=key)


# 4 -----------------------------------------------------------------------------------------


def test_trained_codebook_vectors_reencode_to_their_own_indices(world):
    q = world.model.quantize
    assert q.lookup == "euclidean" and q.codebook_dim == q.dim
    codes = q.codes()
    assert len(torch.unique(codes, dim=0)) == q.codebook_size  # distinct codes, else ties go to the lower index
    latent = codes.t().reshape(1, q.codebook_dim, q.codebook_size, 1)  # (1, d, K, 1)
    with torch.no_grad():
        out = q(latent)
    assert torch.equal(out.indices.flatten(), torch.arange(q.codebook_size))
    assert torch.equal(out.quantized, latent)  # the codes themselves come back, bit for bit
    assert torch.equal(nearest_codes(codes, codes, "euclidean"), torch.arange(q.codebook_size))


@pytest.mark.parametrize("lookup", ["euclidean", "cosine"])
@pytest.mark.parametrize("codebook_dim", [None, 3])
@pytest.mark.parametrize("k", [16, 300])
def test_code_vectors_reencode_to_their_own_indices(lookup, codebook_dim, k):
    torch.manual_seed(k)
    q = VectorQuantizer(8, k, lookup=lookup, codebook_dim=codebook_dim, init="normal").eval()
    codes = q.codes()  # code space: (K, d), l2-normalised for cosine
    d = q.codebook_dim
    assert codes.shape == (k, d)
    want = torch.arange(k)
    assert torch.equal(nearest_codes(codes, codes, lookup), want)
    assert torch.equal(nearest_codes(codes, codes, lookup, chunk=64), want)  # many small blocks
    if codebook_dim is None:  # through the layer: codes as a (1, d, K, 1) latent
        latent = codes.t().reshape(1, d, k, 1)
        with torch.no_grad():
            assert torch.equal(q(latent).indices.flatten(), want)
    else:  # factorised: a latent whose projection into code space is each code (least squares)
        w, b = q.project_in.weight.detach(), q.project_in.bias.detach()  # (d, D), (d,)
        z = torch.linalg.lstsq(w.double(), (codes - b).double().t()).solution.float()  # (D, K)
        with torch.no_grad():
            assert torch.equal(q(z.reshape(1, q.dim, k, 1)).indices.flatten(), want)


# 5 -----------------------------------------------------------------------------------------


def test_cli_encode_folder_with_classes_and_a_corrupt_file(world, tmp_path):
    src = tmp_path / "pictures"
    for c, cls in enumerate(("cat", "dog")):
        (src / cls).mkdir(parents=True)
        for i in range(6):
            (src / cls / f"{i}.png").write_bytes(png(1000 + 10 * c + i, h=20, w=24))
    (src / "cat" / "bad.png").write_bytes(b"not an image")
    out = tmp_path / "enc"
    res = rvq("encode", world.run, src, out, "--per-shard", 4, "-q")
    assert res.returncode == 0, res.stderr + res.stdout
    assert "1 sample(s) skipped" in res.stdout and "cat_bad_png" in res.stdout
    m = json.loads((out / "manifest.json").read_text())
    assert m["classes"] == {"cat": 0, "dog": 1}
    assert m["count"] == 12
    assert [k for k, _ in m["skipped"]] == ["cat_bad_png"]
    skipped = (out / "skipped.txt").read_text().splitlines()
    assert len(skipped) == 1 and skipped[0].startswith("cat_bad_png\t")
    sizes = []
    for name in m["shards"]:
        with tarfile.open(out / name) as tar:
            sizes.append(len(tar.getnames()) // 2)
    assert max(sizes) <= 4 and sum(sizes) == 12
    rows = read_tokens(out, m["shards"])
    want = {f"{cls}_{i}_png": c for c, cls in enumerate(("cat", "dog")) for i in range(6)}
    assert sorted(k for k, _, _ in rows) == sorted(want)
    for key, tokens, meta in rows:
        assert meta["cls"] == want[key], key
        assert tokens.shape == tuple(GRID) and tokens.dtype == np.uint16
        assert meta["source"]["path"] == str(src / key.split("_")[0] / (key.split("_")[1] + ".png"))


# 6 -----------------------------------------------------------------------------------------


def _state(out):
    """name -> (inode, mtime_ns) of every token shard and unit record."""
    files = list(out.glob("tokens-*.tar")) + list((out / ".units").glob("unit-*.json"))
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in files}


def _check_complete(world, out, shards_per_unit):
    m = json.loads((out / "manifest.json").read_text())
    assert sorted(p.name for p in out.glob("*.tar")) == sorted(m["shards"])
    assert len(m["shards"]) == N_SHARDS * shards_per_unit
    keys = [k for k, _, _ in read_tokens(out, m["shards"])]
    assert len(keys) == len(set(keys)), "duplicate keys"
    assert sorted(keys) == sorted(world.keys) and m["count"] == len(world.keys)


def test_resume_redoes_only_the_missing_unit(world, tmp_path):
    out = tmp_path / "enc"
    kw = {"per_shard": 3, "num_workers": 0, "quiet": True}  # each unit of 5 -> 2 token shards
    first = encode_dataset(world.run, world.pattern, out, **kw)
    assert first.encoded_now == 20
    _check_complete(world, out, 2)
    before = _state(out)

    # an interrupted run: unit 2's shards and record gone, no manifest
    (out / ".units" / "unit-000002.json").unlink()
    for p in out.glob("tokens-000002-*.tar"):
        p.unlink()
    (out / "manifest.json").unlink()
    again = encode_dataset(world.run, world.pattern, out, **kw)
    assert again.encoded_now == PER_SHARD
    after = _state(out)
    assert after.keys() == before.keys()
    redone = {n for n in after if after[n] != before[n]}
    assert redone == {"unit-000002.json", "tokens-000002-000000.tar", "tokens-000002-000001.tar"}
    _check_complete(world, out, 2)

    # killed after a unit's shards were written but before its record: redone, not duplicated
    (out / ".units" / "unit-000001.json").unlink()
    assert encode_dataset(world.run, world.pattern, out, **kw).encoded_now == PER_SHARD
    _check_complete(world, out, 2)

    # nothing left: a re-run rewrites nothing
    before = _state(out)
    assert encode_dataset(world.run, world.pattern, out, **kw).encoded_now == 0
    assert _state(out) == before
    _check_complete(world, out, 2)


def test_interrupted_encode_continues_where_it_stopped(world, tmp_path):
    from rvq_cli.tokens import encode as enc

    out = tmp_path / "enc"
    real, calls = enc.write_shards, []

    def dies_on_third_unit(rows, *a, **kw):
        calls.append(kw.get("prefix"))
        if len(calls) == 3:
            raise RuntimeError("killed")
        return real(rows, *a, **kw)

    with mock.patch.object(enc, "write_shards", dies_on_third_unit), pytest.raises(RuntimeError, match="killed"):
        encode_dataset(world.run, world.pattern, out, num_workers=0, quiet=True)
    assert sorted(p.name for p in (out / ".units").glob("unit-*.json")) == ["unit-000000.json", "unit-000001.json"]
    assert not (out / "manifest.json").exists()
    before = _state(out)
    report = encode_dataset(world.run, world.pattern, out, num_workers=0, quiet=True)
    assert report.encoded_now == 2 * PER_SHARD
    after = _state(out)
    assert all(after[n] == v for n, v in before.items())  # units 0 and 1 untouched
    _check_complete(world, out, 1)


def test_encode_with_other_settings_or_tokenizer_is_refused_until_restart(world, tmp_path):
    out = tmp_path / "enc"
    assert rvq("encode", world.run, world.pattern, out, "--num-workers", 0, "-q", inprocess=True).returncode == 0
    before = _state(out)
    res = rvq("encode", world.run, world.pattern, out, "--per-shard", 2, "--num-workers", 0, "-q", inprocess=True)
    assert_user_error(res, "--restart", "per_shard")
    res = rvq("encode", world.run_b, world.pattern, out, "--num-workers", 0, "-q", inprocess=True)
    assert_user_error(res, "--restart", "tokenizer")
    assert _state(out) == before  # refused runs change nothing
    res = rvq("encode", world.run, world.pattern, out, "--per-shard", 2, "--num-workers", 0, "-q", "--restart",
              inprocess=True)
    assert res.returncode == 0, res.stderr
    _check_complete(world, out, 3)  # 5 samples per unit, at most 2 per shard; no stale shards left


def test_encode_refuses_image_size_zero(world, tmp_path):
    res = rvq("encode", world.run, world.pattern, tmp_path / "enc", "--image-size", 0, "--num-workers", 0, "-q",
              inprocess=True)
    assert_user_error(res, "image-size")
    assert not (tmp_path / "enc" / "manifest.json").exists()


# 7 -----------------------------------------------------------------------------------------


def _token_shard(folder, tokens_npy, tokenizer):
    meta = {"key": "img000", "tokenizer": tokenizer, "grid": GRID, "codebook_size": K}
    write_shards([{"__key__": "img000", "tokens.npy": tokens_npy, "json": meta}], folder, prefix="tokens")
    return str(folder / "tokens-000000.tar")


def _npy(a, **kw):
    buf = io.BytesIO()
    np.save(buf, a, **kw)
    return buf.getvalue()


def test_decode_refuses_tokens_of_another_tokenizer(world, encoded, tmp_path):
    other = load_tokenizer(world.run_b).tokenizer_id
    assert other != world.tok.tokenizer_id
    res = rvq("decode", world.run_b, encoded.out, tmp_path / "a", "-q", inprocess=True)
    assert_user_error(res, world.tok.tokenizer_id, other)
    # a shard pattern (no manifest): the per-sample check names both as well
    res = rvq("decode", world.run_b, encoded.out / "tokens-000000-000000.tar", tmp_path / "b", "-q", inprocess=True)
    assert_user_error(res, world.tok.tokenizer_id, other)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_decode_refuses_indices_outside_the_codebook(world, tmp_path):
    tokens = np.zeros(GRID, dtype=np.uint16)
    tokens[3, 4] = K
    shard = _token_shard(tmp_path / "tok", _npy(tokens), world.tok.tokenizer_id)
    res = rvq("decode", world.run, shard, tmp_path / "png", "-q", inprocess=True)
    assert_user_error(res, "outside", "img000")
    assert not (tmp_path / "png").exists()
    # the same shard with an in-range index decodes: the refusal is about the index
    tokens[3, 4] = K - 1
    shard = _token_shard(tmp_path / "tok", _npy(tokens), world.tok.tokenizer_id)
    assert rvq("decode", world.run, shard, tmp_path / "png", "-q", inprocess=True).returncode == 0
    assert (tmp_path / "png" / "img000.png").is_file()


def test_decode_writes_nothing_when_a_later_shard_is_refused(world, encoded, tmp_path):
    bad = np.zeros(GRID, dtype=np.uint16)
    bad[0, 0] = K
    shard = _token_shard(tmp_path / "zz", _npy(bad), world.tok.tokenizer_id)  # sorts after the good shards
    pattern = f"{{{encoded.out}/tokens-*.tar,{shard}}}"
    res = rvq("decode", world.run, pattern, tmp_path / "png", "-q", inprocess=True)
    assert_user_error(res, "outside")
    assert not (tmp_path / "png").exists()  # the good shards before it were not decoded either


def test_decode_never_unpickles_tokens(world, tmp_path):
    live = tmp_path / "live-marker"
    payload = _npy(np.array([Touch(live)], dtype=object), allow_pickle=True)
    np.load(io.BytesIO(payload), allow_pickle=True)
    assert live.exists()  # the payload is real: unpickling it creates its marker
    marker = tmp_path / "marker"
    shard = _token_shard(tmp_path / "tok", _npy(np.array([Touch(marker)], dtype=object), allow_pickle=True),
                         world.tok.tokenizer_id)
    res = rvq("decode", world.run, shard, tmp_path / "png", "-q", inprocess=True)
    assert_user_error(res, "tokens.npy")
    assert not marker.exists()
    assert not (tmp_path / "png").exists()


def test_decode_refuses_keys_that_would_leave_out(world, tmp_path):
    npy, meta = _npy(np.zeros(GRID, dtype=np.uint16)), json.dumps({"tokenizer": world.tok.tokenizer_id}).encode()
    shard = tmp_path / "evil.tar"
    with tarfile.open(shard, "w") as tar:
        for name, data in (("../escape.tokens.npy", npy), ("../escape.json", meta)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    res = rvq("decode", world.run, shard, tmp_path / "out" / "png", "-q", inprocess=True)
    assert_user_error(res, "cannot be used as a file name")
    assert not (tmp_path / "out" / "escape.png").exists() and not (tmp_path / "out").exists()


# 8 -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_checkpoints(world):
    root = world.root / "bad"
    root.mkdir()
    ckpt = max(world.run.glob("ckpt-*"))
    yaml = root / "recipe.yaml"
    shutil.copy(ckpt / "recipe.yaml", yaml)
    pt = root / "model.pt"
    torch.save({"state": Touch(root / "pt-marker")}, pt)
    trunc = root / "trunc"
    shutil.copytree(world.run, trunc)
    w = max(trunc.glob("ckpt-*")) / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    pickled = root / "pickled" / "ckpt-00000003"
    pickled.mkdir(parents=True)
    shutil.copy(ckpt / "recipe.yaml", pickled / "recipe.yaml")
    torch.save({"state": Touch(root / "weights-marker")}, pickled / "model.safetensors")
    return {"missing": (root / "nowhere", "does not exist"), "yaml": (yaml, "is a file, not a checkpoint"),
            "pt": (pt, "pickle"), "truncated": (trunc, "not a readable safetensors"),
            "pickled-weights": (pickled, "not a readable safetensors")}


def _markers(world):
    return sorted(p.name for p in (world.root / "bad").glob("*-marker"))


@pytest.mark.parametrize("command", ["encode", "decode"])
@pytest.mark.parametrize("case", ["missing", "yaml", "pt", "truncated", "pickled-weights"])
def test_bad_checkpoint_is_a_clean_error(world, encoded, bad_checkpoints, tmp_path, command, case):
    path, fragment = bad_checkpoints[case]
    data = world.pattern if command == "encode" else encoded.out
    res = rvq(command, path, data, tmp_path / "out", "-q", inprocess=True)
    assert_user_error(res, fragment)
    assert _markers(world) == []
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_bad_checkpoint_through_the_real_command(world, bad_checkpoints, tmp_path):
    live = world.root / "live.pt"
    torch.save({"state": Touch(tmp_path / "live-marker")}, live)
    torch.load(live, weights_only=False)
    assert (tmp_path / "live-marker").exists()  # the payload is real
    path, fragment = bad_checkpoints["pt"]
    res = rvq("encode", path, world.pattern, tmp_path / "out", "-q")
    assert_user_error(res, fragment)
    assert _markers(world) == []


def test_optimizer_pickle_of_a_checkpoint_is_never_loaded(world, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(world.run, run)
    for p in run.glob("ckpt-*/optimizer.pt"):
        torch.save({"optimizer": Touch(tmp_path / "marker")}, p)
    tok = load_tokenizer(run)
    assert tok.tokenizer_id == world.tok.tokenizer_id
    encode_dataset(run, world.pattern, tmp_path / "enc", num_workers=0, quiet=True)
    assert not (tmp_path / "marker").exists()


# 9 -----------------------------------------------------------------------------------------


def test_two_process_encode_covers_every_unit_once(world, encoded, tmp_path):
    out = tmp_path / "dist"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(free_port()), "-m", "rvq_cli", "encode", str(world.run), world.pattern, str(out),
           "--num-workers", "0", "-q"]
    res = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300,
                         env=dict(ENV, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    m = json.loads((out / "manifest.json").read_text())
    assert sorted(m["shards"]) == [f"tokens-{i:06d}-000000.tar" for i in range(N_SHARDS)]
    assert sorted(p.name for p in out.glob("*.tar")) == sorted(m["shards"])
    assert m["count"] == len(world.keys)
    records = [json.loads((out / ".units" / f"unit-{i:06d}.json").read_text()) for i in range(N_SHARDS)]
    assert [r["count"] for r in records] == [PER_SHARD] * N_SHARDS
    rows = read_tokens(out, m["shards"])
    keys = [k for k, _, _ in rows]
    assert len(keys) == len(set(keys)) and sorted(keys) == sorted(world.keys)
    single = {k: (t, meta) for k, t, meta in read_tokens(encoded.out)}
    for key, tokens, meta in rows:
        np.testing.assert_array_equal(tokens, single[key][0], err_msg=key)
        assert meta == single[key][1]


def test_encode_and_decode_precision_is_recorded_and_part_of_the_job(world, tmp_path):
    """--precision (default: the run's train.precision, fp32 in the tiny recipe) is in the manifest; a
    continuation in another precision is refused (its codes may differ at near ties); a bad value is a
    user error before anything is written."""
    out = tmp_path / "enc"
    assert rvq("encode", world.run, world.pattern, out, "--num-workers", 0, "-q", inprocess=True).returncode == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["precision"] == "no" and "train.precision" in manifest["precision_reason"]
    res = rvq("encode", world.run, world.pattern, out, "--precision", "bf16", "--num-workers", 0, "-q", inprocess=True)
    assert_user_error(res, "--restart", "precision")
    res = rvq("encode", world.run, world.pattern, tmp_path / "e2", "--precision", "fp8", "-q", inprocess=True)
    assert_user_error(res, "--precision", "auto, no, bf16, fp16")
    assert not (tmp_path / "e2").exists()
    bf = tmp_path / "bf"
    assert rvq("encode", world.run, world.pattern, bf, "--precision", "bf16", "--num-workers", 0, "-q",
               inprocess=True).returncode == 0
    assert json.loads((bf / "manifest.json").read_text())["precision"] == "bf16"
    res = rvq("decode", world.run, bf, tmp_path / "img", "--precision", "bf16", "-q", inprocess=True)
    assert res.returncode == 0, res.stderr
    assert len(list((tmp_path / "img").rglob("*.png"))) == manifest["count"]
