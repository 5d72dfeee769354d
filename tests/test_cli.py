"""The rvq command, driven as a user runs it (the installed console script)."""

import os
import shutil
import subprocess
import sys

import pytest

import rvq_cli

RVQ = shutil.which("rvq") or os.path.join(os.path.dirname(sys.executable), "rvq")


def run(*args):
    env = dict(os.environ, COLUMNS="120", RVQ_COMPILE="never")
    return subprocess.run([RVQ, *args], capture_output=True, text=True, env=env, timeout=120)


def test_version():
    res = run("--version")
    assert res.returncode == 0
    assert res.stdout.strip() == f"rvq {rvq_cli.__version__}"


def test_help_lists_commands():
    res = run("--help")
    assert res.returncode == 0
    assert "estimators" in res.stdout


def test_estimators_lists_and_checks_every_estimator():
    res = run("estimators", "--rows", "256", "--dim", "8")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    split = next(i for i, line in enumerate(lines) if "live check" in line)
    listing, live = lines[:split], lines[split:]
    for name, kind in (("ste", "pointwise"), ("rotation", "pointwise"), ("rotation_unscaled", "pointwise"),
                       ("reflection", "pointwise"), ("hessian", "loss-level"), ("exact", "loss-level"),
                       ("gumbel", "stochastic")):
        row = next(line for line in listing if line.startswith(f"│ {name} "))
        assert row.split("│")[2].strip() == kind
    for name in ("ste", "rotation", "rotation_unscaled", "reflection"):
        row = next(line for line in live if line.startswith(f"│ {name} "))
        assert "│ yes " in row  # forward equals q bit for bit
    rotation_row = next(line for line in live if line.startswith("│ rotation "))
    ste_row = next(line for line in live if line.startswith("│ ste "))
    angle = lambda row: float(row.split("│")[3])  # noqa: E731
    assert angle(rotation_row) < 1e-9 < angle(ste_row)  # rotation preserves angles, STE does not


@pytest.mark.parametrize("args, fragment", [
    (("estimators", "--dim", "0"), "--dim and --rows must be positive"),
    (("estimators", "--rows", "-3"), "--dim and --rows must be positive"),
    (("estimators", "--dim", "many"), "Invalid value for '--dim'"),
    (("frobnicate",), "frobnicate"),
])
def test_bad_input_is_a_clean_error(args, fragment):
    res = run(*args)
    assert res.returncode != 0
    assert fragment in res.stderr
    assert "Traceback" not in res.stderr + res.stdout


def test_every_user_facing_error_shares_one_base():
    """The CLI catches rvq_cli.errors.RvqError once (one paragraph, exit 2); every error class the
    library raises for the user to fix derives from it."""
    from rvq_cli.cli import UserError
    from rvq_cli.compare.runner import CompareError
    from rvq_cli.compare.synthetic_report import SyntheticError
    from rvq_cli.config import RecipeError
    from rvq_cli.data import DataError
    from rvq_cli.errors import RvqError
    from rvq_cli.evaluate import CheckpointError, EvalError
    from rvq_cli.evaluate.fidelity import FidelityError
    from rvq_cli.evaluate.i3d import I3DError
    from rvq_cli.losses import PerceptualError
    from rvq_cli.tokens import EncodeError, TokenError
    from rvq_cli.train import TrainingError

    for cls in (UserError, CompareError, SyntheticError, RecipeError, DataError, CheckpointError, EvalError,
                FidelityError, I3DError, PerceptualError, EncodeError, TokenError, TrainingError):
        assert issubclass(cls, RvqError), cls
