"""rvq_cli.files: the one atomic writer every output file goes through."""

import json
import stat

import pytest

from rvq_cli.files import atomic_path, write_json_atomic, write_text_atomic


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    path = tmp_path / "out.txt"
    write_text_atomic(path, "old\n")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert path.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_written_files_are_complete_public_and_named_by_suffix(tmp_path):
    path = tmp_path / "sub" / "fig.png"
    with atomic_path(path, suffix=".png") as tmp:
        assert tmp.parent == path.parent and tmp.name.startswith(".fig.png.") and tmp.suffix == ".png"
        tmp.write_bytes(b"png")
    assert path.read_bytes() == b"png" and stat.S_IMODE(path.stat().st_mode) == 0o644


def test_json_is_strict(tmp_path):
    path = tmp_path / "r.json"
    write_json_atomic(path, {"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": 2}})
    assert json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(c)) == {"a": None, "b": [1.0, None],
                                                                                     "c": {"d": 2}}


def test_caches_follow_xdg_cache_home(tmp_path, monkeypatch):
    from rvq_cli.data.demo import default_cache
    from rvq_cli.evaluation.i3d import WEIGHTS_NAME, find_i3d_weights
    from rvq_cli.files import user_cache

    monkeypatch.delenv("RVQ_CACHE", raising=False)
    monkeypatch.delenv("RVQ_I3D_WEIGHTS", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert user_cache("rvq") == tmp_path / "xdg" / "rvq" == default_cache()
    monkeypatch.setenv("RVQ_CACHE", str(tmp_path / "mine"))
    assert default_cache() == tmp_path / "mine"  # the tool's own variable wins
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert find_i3d_weights() is None
    weights = tmp_path / "xdg" / "videogpt" / WEIGHTS_NAME
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"x")
    assert find_i3d_weights() == weights
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert user_cache("rvq") == tmp_path / "home" / ".cache" / "rvq"


def test_the_package_exports_its_entry_points_lazily():
    code = ("import sys, rvq_cli; assert 'torch' not in sys.modules; "
            "from rvq_cli import load_recipe, load_tokenizer, build_tokenizer, encode_dataset, decode_dataset; "
            "import rvq_cli.runs, rvq_cli.config; assert load_tokenizer is rvq_cli.runs.load_tokenizer; "
            "assert load_recipe is rvq_cli.config.load_recipe; "
            "from rvq_cli import train, evaluate; import rvq_cli.training.trainer, rvq_cli.evaluation.evaluator; "
            "assert rvq_cli.train is train is rvq_cli.training.train and callable(train); "
            "assert rvq_cli.evaluate is evaluate is rvq_cli.evaluation.evaluate and callable(evaluate); "
            # torch-fidelity (and torchvision with torch._dynamo) only where the metrics run: seconds a command
            "assert 'torch_fidelity' not in sys.modules, 'rvq_cli.evaluation imports torch_fidelity'")
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
