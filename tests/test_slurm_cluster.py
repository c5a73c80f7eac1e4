"""The local SLURM test cluster is real: two idle nodes, a 2-node torch.distributed job, a job array."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

# One task per node: all-reduces (rank + 1) over gloo, writes "NODE VALUE" to DIR/rank<R>.txt.
ALLREDUCE = """
import os, sys
from datetime import timedelta

import torch
import torch.distributed as dist

rank, world = int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"])
dist.init_process_group(
    "gloo",
    init_method=f"tcp://{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}",
    rank=rank,
    world_size=world,
    timeout=timedelta(seconds=60),
)
value = torch.tensor([float(rank + 1)])
dist.all_reduce(value)
with open(os.path.join(sys.argv[1], f"rank{rank}.txt"), "w") as f:
    f.write(f"{os.environ['SLURMD_NODENAME']} {value.item()}\\n")
dist.destroy_process_group()
"""


def _job_output(path: Path) -> str:
    return path.read_text() if path.exists() else f"(no {path})"


def test_both_nodes_idle(slurm_cluster):
    # A job of an earlier test may still be finishing: allow it a few seconds.
    deadline = time.monotonic() + 30
    while True:
        out = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True, check=True
        ).stdout
        nodes = dict(line.split() for line in out.splitlines())
        if nodes == {"node1": "idle", "node2": "idle"} or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert nodes == {"node1": "idle", "node2": "idle"}


def test_two_node_gloo_all_reduce(slurm_cluster, tmp_path):
    (tmp_path / "allreduce.py").write_text(ALLREDUCE)
    # The rendezvous host is the job's first node; the port is derived from the job ID so that concurrent
    # jobs do not collide.
    (tmp_path / "job.sh").write_text(
        textwrap.dedent(f"""\
            #!/bin/bash
            set -euo pipefail
            MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
            export MASTER_ADDR
            export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))
            srun {sys.executable} allreduce.py {tmp_path}
            """)
    )
    job = slurm_cluster.submit(
        ["--nodes=2", "--ntasks-per-node=1", "--time=5", "--output=job-%j.out", "job.sh"], cwd=tmp_path
    )
    state = slurm_cluster.wait(job, timeout=180)
    output = _job_output(tmp_path / f"job-{job}.out")
    assert state == "COMPLETED", output
    results = sorted((tmp_path / f"rank{rank}.txt").read_text().split() for rank in range(2))
    assert results == [["node1", "3.0"], ["node2", "3.0"]], output


def test_job_array(slurm_cluster, tmp_path):
    job = slurm_cluster.submit(
        ["--array=0-3", "--ntasks=1", "--output=array-%a.out", "--wrap", "echo task $SLURM_ARRAY_TASK_ID"],
        cwd=tmp_path,
    )
    assert slurm_cluster.wait(job, timeout=120) == "COMPLETED"
    assert slurm_cluster.states(job) == {f"{job}_{task}": "COMPLETED" for task in range(4)}
    for task in range(4):
        assert _job_output(tmp_path / f"array-{task}.out") == f"task {task}\n"
