"""What the multi-process training tests share: ``run_two``, tests/train/dist_worker.py under
torchrun with two CPU (gloo) processes."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("dist_worker.py")


def run_two_processes(recipe: Path, out: Path, port: int, *overrides: str) -> subprocess.CompletedProcess:
    """Train ``recipe`` (with ``overrides``) in two processes; each rank dumps its weights (and the
    discriminator's), its data keys and its step into ``out``. Fails the test on a non-zero exit.
    The worker is a script (torchrun runs it by path): it imports nothing from tests/."""
    env = dict(os.environ, OMP_NUM_THREADS="1", RVQ_COMPILE="never")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           str(WORKER), str(recipe), str(out), *overrides]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


@pytest.fixture
def run_two():
    """run_two(recipe, out, port, *overrides) -> the finished torchrun process (see run_two_processes)."""
    return run_two_processes
