"""Pytest plugin: a real SLURM cluster on this machine (scripts/slurm_local.sh), shared by the session.

Load it with ``pytest_plugins = ["slurm_fixture"]`` in tests/conftest.py (or ``-p slurm_fixture`` with tests/
on PYTHONPATH). The first test that asks for ``slurm_cluster`` installs and starts the cluster: if that fails,
the tests fail (they never skip). The cluster is stopped at the end of the session if this fixture started it;
one that was already running is left running.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "slurm_local.sh"

# sacct states after which a job record no longer changes. Anything else (PENDING, RUNNING, REQUEUED,
# COMPLETING, ...) means the job is still in progress.
FINAL_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "REVOKED",
        "TIMEOUT",
    }
)


def _run(args: Sequence[str], timeout: float = 60, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=False, timeout=timeout, **kwargs)


def _check(proc: subprocess.CompletedProcess[str]) -> str:
    if proc.returncode != 0:
        raise RuntimeError(
            f"{shlex.join(proc.args)} failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}"
        )
    return proc.stdout


def _script(command: str, timeout: float) -> str:
    """Runs ``slurm_local.sh COMMAND``; a failure fails the calling test (or the session's teardown)."""
    proc = _run(["bash", str(SCRIPT), command], timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(
            f"{SCRIPT} {command} failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}", pytrace=False
        )
    return proc.stdout


@dataclass(frozen=True)
class SlurmCluster:
    """Handle on the running cluster: partition ``debug`` with nodes node1 and node2, 2 CPUs each."""

    conf: str  # the slurm.conf that SLURM clients must find through SLURM_CONF
    nodes: tuple[str, ...] = ("node1", "node2")

    def env(self, env: Mapping[str, str] | None = None) -> dict[str, str]:
        """``env`` (default: os.environ) with SLURM_CONF pointing at this cluster."""
        return {**(os.environ if env is None else env), "SLURM_CONF": self.conf}

    def submit(
        self, args: Sequence[str], cwd: str | os.PathLike | None = None, env: Mapping[str, str] | None = None
    ) -> str:
        """``sbatch --parsable ARGS``; returns the job ID. The job inherits ``env`` (sbatch --export=ALL)."""
        out = _check(_run(["sbatch", "--parsable", *args], cwd=cwd, env=self.env(env)))
        return out.strip().split(";")[0]  # "ID" or "ID;CLUSTER"

    def states(self, job_id: str) -> dict[str, str]:
        """State of each of the job's records, by JobID (one per array task: "7_0", ...; pending array tasks
        may still share one record, "7_[2-3]"). From slurmctld (squeue) while it knows the job, which is up to
        date, else from sacct, which lags behind by up to seconds; {} while neither knows the job."""
        return self._squeue(job_id) or self._sacct(job_id)

    def state(self, job_id: str) -> str:
        """The job's state: for an array, its tasks' distinct states joined by ","; "" while unknown."""
        return ",".join(sorted(set(self.states(job_id).values())))

    def wait(self, job_id: str, timeout: float = 120) -> str:
        """Polls until every record of the job is in a final state; returns it (for an array, the
        tasks' distinct final states joined by ",", so "COMPLETED" when all completed).

        sacct lags behind slurmctld (records reach slurmdbd asynchronously; an array task may for a moment be
        listed under the array's own ID), so the job counts as finished once sacct's records are final and
        match slurmctld's (squeue); after slurmctld has forgotten the job (MinJobAge), sacct's alone."""
        deadline = time.monotonic() + timeout
        while True:
            accounted, queued = self._sacct(job_id), self._squeue(job_id)
            if accounted and set(accounted.values()) <= FINAL_STATES and queued in ({}, accounted):
                return ",".join(sorted(set(accounted.values())))
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"job {job_id} not finished after {timeout} s: sacct {accounted}, squeue {queued}"
                )
            time.sleep(0.25)

    def _sacct(self, job_id: str) -> dict[str, str]:
        out = _check(_run(["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "JobID,State"], env=self.env()))
        return _parse_states(out)

    def _squeue(self, job_id: str) -> dict[str, str]:
        # Fails ("Invalid job id specified") once slurmctld has forgotten the job: then {}.
        proc = _run(["squeue", "-h", "-j", job_id, "-t", "all", "-o", "%i|%T"], env=self.env())
        return _parse_states(proc.stdout) if proc.returncode == 0 else {}


def _parse_states(out: str) -> dict[str, str]:
    """``JOBID|STATE`` lines -> {JOBID: STATE}; "CANCELLED by 0" -> "CANCELLED"."""
    pairs = (line.partition("|")[::2] for line in out.splitlines() if line.strip())
    return {record: state.split(" ")[0] for record, state in pairs}


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    _script("install", timeout=900)
    already_up = _run(["bash", str(SCRIPT), "status"]).returncode == 0
    _script("start", timeout=300)
    # `env` prints `export SLURM_CONF=...` lines; they hold for the whole session (and the jobs it submits).
    exports = dict(
        word.split("=", 1)
        for line in _script("env", timeout=60).splitlines()
        for word in shlex.split(line)[1:]
    )
    saved = {name: os.environ.get(name) for name in exports}
    os.environ.update(exports)
    try:
        yield SlurmCluster(conf=exports["SLURM_CONF"])
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if not already_up:
            _script("stop", timeout=300)
