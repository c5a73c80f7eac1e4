"""The job scripts slurm/*_wame.sh on the local SLURM cluster, in CPU smoke mode (digits, 1/8 width, gloo).

One fixture submits every job of this module at once (SLURM runs them side by side on node1 and node2);
each test waits for the jobs it checks:

* 1 node x 2 tasks: the run gets the time-limit signal (SIGUSR1 to the batch script) after its first epoch
  checkpoint, requeues itself and resumes;
* 2 nodes x 1 task: the same run, uninterrupted; both end with exactly the same result (same world size);
* bad input fails the job at once, with a clear message in its log;
* shellcheck passes over slurm/*.sh.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from launching import ROOT
from slurm_fixture import FINAL_STATES, SlurmCluster

pytestmark = pytest.mark.slurm

SMOKE = {"DATASET": "digits", "WIDTH": "0.125", "BATCH_SIZE": "64"}


@dataclass(frozen=True)
class Job:
    id: str
    out: Path  # the run folder (OUT_DIR)
    log: Path  # the job's output (sbatch --output)

    def text(self) -> str:
        return self.log.read_text() if self.log.exists() else f"(no {self.log})"

    def metrics(self) -> list[dict]:
        """Per-epoch metrics without the wall time (the only thing that may differ between equal runs)."""
        epochs = json.loads((self.out / "result.json").read_text())["epochs"]
        return [{k: v for k, v in e.items() if k != "wall_s"} for e in epochs]


def submit(cluster: SlurmCluster, tmp: Path, name: str, script: str, *flags: str, **env: str) -> Job:
    """``ENV... sbatch FLAGS slurm/SCRIPT`` from the repository root, the run folder and log in ``tmp``."""
    out, log = tmp / name, tmp / f"{name}.log"
    job_id = cluster.submit(
        [f"--output={log}", "--time=10", *flags, f"slurm/{script}"],
        cwd=ROOT,
        env={**os.environ, **SMOKE, "OUT_DIR": str(out), **env},
    )
    return Job(job_id, out, log)


@pytest.fixture(scope="module")
def jobs(slurm_cluster, tmp_path_factory) -> dict[str, Job]:
    tmp = tmp_path_factory.mktemp("templates")
    one_node, two_nodes = ("--nodes=1", "--ntasks-per-node=2"), ("--nodes=2", "--ntasks-per-node=1")
    return {
        # Bad input first: these fail within a second and free their CPU.
        "no data": submit(
            slurm_cluster, tmp, "no-data", "cifar10_wame.sh", DATASET="cifar10", DATA_DIR=str(tmp / "none")
        ),
        "bad optimizer": submit(slurm_cluster, tmp, "bad-optimizer", "mnist_wame.sh", OPTIMIZER="adagrad"),
        "no weights": submit(
            slurm_cluster, tmp, "no-weights", "cifar100_wame.sh", INIT_WEIGHTS=str(tmp / "seed0.pt")
        ),
        # The first takes a whole node (2 CPUs); the 2-node job starts when the other node is free.
        "one node": submit(slurm_cluster, tmp, "one-node", "cifar100_wame.sh", *one_node, EPOCHS="4"),
        "two nodes": submit(slurm_cluster, tmp, "two-nodes", "cifar100_wame.sh", *two_nodes, EPOCHS="4"),
        "fsdp2": submit(
            slurm_cluster, tmp, "fsdp2", "cifar100_wame.sh", *two_nodes, EPOCHS="2", ENGINE="fsdp2"
        ),
    }


def finished(cluster: SlurmCluster, job: Job, timeout: float = 600) -> str:
    state = cluster.wait(job.id, timeout=timeout)
    assert state in FINAL_STATES, job.text()
    return state


def wait_until(condition: Callable[[], bool], cluster: SlurmCluster, job: Job, timeout: float = 600) -> None:
    """Polls ``condition``; fails at once, with the job's log, if the job ends first."""
    deadline = time.monotonic() + timeout
    while not condition():
        state = cluster.state(job.id)
        assert state not in FINAL_STATES, f"job {job.id} ended ({state}) first:\n{job.text()}"
        assert time.monotonic() < deadline, f"timed out; job {job.id} is {state}:\n{job.text()}"
        time.sleep(0.1)


def node_list(job: Job) -> str:
    out = subprocess.run(
        ["sacct", "-j", job.id, "-X", "-n", "-P", "-o", "NodeList"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def test_one_node_two_tasks_signalled_requeues_and_resumes(slurm_cluster, jobs):
    # First in the module: it watches the run from its start.
    job = jobs["one node"]
    first = job.out / "checkpoints" / "epoch0001" / "COMPLETE"
    wait_until(first.exists, slurm_cluster, job)
    assert not (job.out / "result.json").exists(), "the run ended before it could be interrupted"
    # What SLURM sends 120 s before the time limit (#SBATCH --signal=B:USR1@120).
    subprocess.run(["scancel", "--batch", "--signal=USR1", job.id], check=True, capture_output=True)
    assert finished(slurm_cluster, job) == "COMPLETED", job.text()
    log = job.text()
    assert "1 node(s) x 2 task(s), rendezvous node" in log
    assert "2 rank(s)" in log
    assert f"requeueing job {job.id}" in log
    assert "(restart 1)" in log
    assert "resuming from checkpoint epoch000" in log


def test_two_nodes_one_task_each(slurm_cluster, jobs):
    job = jobs["two nodes"]
    assert finished(slurm_cluster, job) == "COMPLETED", job.text()
    assert "2 node(s) x 1 task(s), rendezvous node1:" in job.text()
    assert node_list(job) == "node[1-2]"
    assert (job.out / "job.log").resolve() == job.log.resolve()  # the log, linked into the run folder
    metrics = job.metrics()
    assert [e["epoch"] for e in metrics] == [1, 2, 3, 4]
    assert metrics[-1]["val_acc"] > 0.5


def test_fsdp2_engine_runs_across_two_nodes(slurm_cluster, jobs):
    """ENGINE=fsdp2: the same template starts launch/train.py --engine fsdp2 with srun, one rank per node."""
    job = jobs["fsdp2"]
    assert finished(slurm_cluster, job) == "COMPLETED", job.text()
    assert node_list(job) == "node[1-2]"
    result = json.loads((job.out / "result.json").read_text())
    assert result["settings"]["engine"] == "fsdp2"
    assert [e["epoch"] for e in result["epochs"]] == [1, 2]
    assert (job.out / "checkpoints").is_dir()


def test_interrupted_run_ends_as_the_uninterrupted_one(slurm_cluster, jobs):
    one, two = jobs["one node"], jobs["two nodes"]
    finished(slurm_cluster, one)
    finished(slurm_cluster, two)
    assert one.metrics() == two.metrics()


@pytest.mark.parametrize(
    "name, message",
    [
        ("no data", "CIFAR-10 data not found: missing data_batch_1"),
        ("bad optimizer", "argument --optimizer: invalid choice: 'adagrad' (choose from 'sgd', 'rmsprop'"),
        ("no weights", "initial-weights file '{tmp}/seed0.pt' does not exist"),
    ],
)
def test_bad_input_fails_the_job_at_once(slurm_cluster, jobs, name, message):
    job = jobs[name]
    assert finished(slurm_cluster, job, timeout=120) == "FAILED", job.text()
    assert f"error: {message.format(tmp=job.log.parent)}" in job.text()
    assert "no rank was started" in job.text() and "rendezvous" not in job.text()


def test_shellcheck():
    scripts = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "slurm").glob("*.sh"))
    assert len(scripts) >= 5
    proc = subprocess.run(["shellcheck", "-x", *scripts], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
