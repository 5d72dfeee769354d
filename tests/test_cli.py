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
