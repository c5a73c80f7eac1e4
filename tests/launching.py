"""Starting real multi-process jobs from the tests: the worker under torchrun / deepspeed / mpirun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
VENV_BIN = Path(sys.executable).parent


def job_env(**extra: str) -> dict[str, str]:
    """The environment of a launched job: the venv first on PATH (its ninja builds the JIT extensions; another
    ninja on the machine would consider them stale and rebuild them), the tests on PYTHONPATH, one thread
    per rank."""
    return {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": f"{TESTS}{os.pathsep}{ROOT}",
        "OMP_NUM_THREADS": "1",
        **extra,
    }


def run(
    command: list[str], *, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Runs ``command``; a failure raises with the tail of its output."""
    proc = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env=env or job_env(), cwd=ROOT
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-6000:]}"
        )
    return proc


def torchrun(nproc: int, script: Path, *args: str) -> list[str]:
    return [str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node", str(nproc), str(script), *args]


def run_worker(nproc: int, out: Path, plan: list, *, timeout: float = 900) -> Path:
    """Runs tests/ds_worker.py on ``nproc`` ranks with ``plan``; returns ``out``."""
    run(torchrun(nproc, TESTS / "ds_worker.py", str(out), json.dumps(plan)), timeout=timeout)
    return out
