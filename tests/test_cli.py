"""The rvq command, driven as a user runs it (the installed console script)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

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


# what README.md's command table documents: a command dropped from the app fails here
README_COMMANDS = {("train",), ("eval",), ("encode",), ("decode",), ("data",), ("data", "shards"),
                   ("data", "prepare"), ("recipes",), ("validate",), ("compare",), ("estimators",)}


def registered_commands() -> dict[tuple[str, ...], list[str]]:
    """Every command group of the Typer app (() is rvq itself) -> its visible sub-commands, read
    from the app object, so a command added later is covered without editing this test."""
    import typer

    from rvq_cli.cli import app

    groups, todo = {}, [((), typer.main.get_command(app))]
    while todo:
        path, group = todo.pop()
        groups[path] = [name for name, cmd in group.commands.items() if not cmd.hidden]
        todo += [(path + (name,), cmd) for name, cmd in group.commands.items()
                 if hasattr(cmd, "commands") and not cmd.hidden]  # a sub-command group
    return groups


def listed_commands(help_text: str) -> list[str]:
    """The names in the Commands panel(s) of a rich --help page: rows that start "│ name  "."""
    panel, names = False, []
    for line in help_text.splitlines():
        if line.startswith("╭─"):
            panel = "Commands" in line
        elif panel and (m := re.match(r"│ (\S+) ", line)):
            names.append(m.group(1))
    return names


def test_help_lists_every_registered_command():
    groups = registered_commands()
    registered = {path + (name,) for path, names in groups.items() for name in names}
    assert README_COMMANDS <= registered, f"documented in README.md, not in the app: {README_COMMANDS - registered}"
    assert ("data",) in groups  # the sub-command group is walked too
    for path, names in groups.items():  # rvq --help, rvq data --help, and any group added later
        res = run(*path, "--help")
        assert res.returncode == 0, res.stderr
        assert sorted(listed_commands(res.stdout)) == sorted(names), (path, res.stdout)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for command in sorted(registered):  # a new command is documented in README.md's command table
        assert f"| `rvq {' '.join(command)}" in readme, f"rvq {' '.join(command)} is not in README.md's table"


def test_estimators_lists_and_checks_every_estimator():
    res = run("estimators", "--rows", "256", "--dim", "8")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    split = next(i for i, line in enumerate(lines) if "live check" in line)
    listing, live = lines[:split], lines[split:]
    for name, kind in (("ste", "pointwise"), ("rotation", "pointwise"), ("rotation_unscaled", "pointwise"),
                       ("reflection", "pointwise"), ("hessian", "loss-level"), ("exact", "loss-level"),
                       ("gumbel", "stochastic"), ("ibq", "codebook-wide"), ("diveq", "stochastic"),
                       ("sf_diveq", "stochastic")):
        row = next(line for line in listing if line.startswith(f"│ {name} "))
        assert row.split("│")[2].strip() == kind
    for setting in ("codebook: simvq", "codebook: affine", "kind: fsq"):  # the codebook variants and FSQ
        assert any(line.startswith(f"│ {setting}") for line in listing), setting
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
    from rvq_cli.evaluation import EvalError
    from rvq_cli.evaluation.fidelity import FidelityError
    from rvq_cli.evaluation.i3d import I3DError
    from rvq_cli.losses import PerceptualError
    from rvq_cli.runs import CheckpointError
    from rvq_cli.tokens import EncodeError, TokenError
    from rvq_cli.training import TrainingError

    for cls in (UserError, CompareError, SyntheticError, RecipeError, DataError, CheckpointError, EvalError,
                FidelityError, I3DError, PerceptualError, EncodeError, TokenError, TrainingError):
        assert issubclass(cls, RvqError), cls
