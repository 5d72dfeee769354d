"""rvq installed from its built wheel, as a user installs it (not editable, not beside the source
tree): the wheel is built offline and must hold every module and every shipped recipe; installed
with --no-deps into a fresh virtual environment, which borrows this environment's dependencies
(torch, ...) through a .pth file, its ``rvq`` lists, validates and trains the shipped quickstart by
name from a folder outside the repository, and ``rvq compare`` finds its default recipe."""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def sh(*args, cwd=None, env=None, timeout=300):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


# what the build reads; built from a copy, so that no build/ folder is left in (or reused from) the repository
SOURCES = ("pyproject.toml", "README.md", "rvq_cli", "recipes")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, src / name)
    res = sh(sys.executable, "-m", "pip", "wheel", src, "--no-deps", "--no-build-isolation", "--no-index",
             "-w", out, cwd=out)
    assert res.returncode == 0, res.stdout + res.stderr
    (path,) = out.glob("rvq-*.whl")
    return path


@pytest.fixture(scope="module")
def venv(tmp_path_factory, wheel) -> Path:
    """A fresh venv with the wheel installed, then this environment's site-packages on its path (the
    .pth is written after pip ran, so that pip saw no other rvq)."""
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    res = sh(sys.executable, "-m", "venv", venv)
    assert res.returncode == 0, res.stdout + res.stderr
    python = venv / "bin" / "python"
    res = sh(python, "-m", "pip", "install", "--no-deps", "--no-index", "--disable-pip-version-check", wheel)
    assert res.returncode == 0, res.stdout + res.stderr
    own = sh(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip()
    deps = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    Path(own, "_rvq_test_dependencies.pth").write_text("".join(f"{d}\n" for d in sorted(deps)))
    return venv


def test_the_wheel_holds_every_module_and_recipe(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "rvq_cli").rglob("*.py")}
    modules |= {p.relative_to(ROOT).as_posix() for p in (ROOT / "rvq_cli").rglob("*.c")}  # built at first use
    missing = modules - names
    assert not missing, f"not in the wheel (add the subpackage to pyproject.toml's packages): {sorted(missing)}"
    recipes = {f"rvq_cli/recipes/{p.name}" for p in (ROOT / "recipes").glob("*.yaml")}
    assert recipes and recipes <= names, sorted(recipes - names)
    assert "rvq_cli/recipes/README.md" in names


def test_the_installed_wheel_trains_a_shipped_recipe_by_name(venv, tmp_path):
    work = tmp_path / "elsewhere"
    work.mkdir()
    assert ROOT not in work.parents
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(COLUMNS="300", RVQ_COMPILE="never", RVQ_CACHE=str(tmp_path / "cache"))
    rvq = venv / "bin" / "rvq"

    where = sh(venv / "bin" / "python", "-c", "import rvq_cli; print(rvq_cli.__file__)", cwd=work, env=env)
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(venv), "rvq_cli must come from the wheel, not the source tree"

    listed = sh(rvq, "recipes", cwd=work, env=env)
    assert listed.returncode == 0, listed.stderr
    assert "quickstart" in listed.stdout and "vqgan_f4" in listed.stdout and str(venv) in listed.stdout

    valid = sh(rvq, "validate", "quickstart", cwd=work, env=env)
    assert valid.returncode == 0 and "quickstart: valid" in valid.stdout, valid.stdout + valid.stderr

    default = sh(rvq, "compare", "ste", "data.val=null", cwd=work, env=env)  # stops at its check: no training
    assert default.returncode == 2 and "quickstart.yaml has no validation set" in default.stderr, default.stderr

    run = work / "run"
    trained = sh(rvq, "train", "quickstart", "train.steps=2", f"output.dir={run}", "--quiet", cwd=work, env=env)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    assert sorted(p.name for p in run.glob("ckpt-*")), trained.stdout
    assert not (work / "runs").exists() and (tmp_path / "cache").is_dir()
