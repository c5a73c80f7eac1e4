"""Who am I in the job? Rank, world size and rendezvous, discovered the same way under every launcher.

``torch.distributed`` wants ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``.
The launchers provide them differently:

* ``deepspeed`` and ``torchrun`` export them all;
* ``srun`` (one task per GPU) exports ``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS``, ``SLURM_LOCALID`` and
  ``SLURM_STEP_NODELIST``: the rendezvous is the first node of the step on ``MASTER_PORT`` (default: a
  port derived from the job id, so concurrent jobs on a node do not collide);
* ``mpirun``/``mpiexec`` starts ranks that only MPI knows about: mpi4py tells rank and size, the
  node-local communicator the local rank, and rank 0 broadcasts its host and a free port;
* a plain ``python`` run is a world of one.

:func:`discover` fills the variables in ``os.environ`` (never overriding ones already set) and returns them.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
from dataclasses import dataclass


@dataclass(frozen=True)
class LaunchEnv:
    """Where this process sits in the job, and how the ranks meet."""

    launcher: str
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int


_MPI_MARKERS = ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "MPI_LOCALRANKID", "MV2_COMM_WORLD_RANK")


def discover() -> LaunchEnv:
    """Works out rank, world size and rendezvous for the current launcher and exports them."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        found = LaunchEnv(
            launcher="torch",
            rank=int(env["RANK"]),
            world_size=int(env["WORLD_SIZE"]),
            local_rank=int(env.get("LOCAL_RANK", 0)),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(env.get("MASTER_PORT", 29500)),
        )
    elif "SLURM_STEP_NUM_TASKS" in env and "SLURM_PROCID" in env:
        found = _from_slurm(env)
    elif any(marker in env for marker in _MPI_MARKERS):
        found = _from_mpi()
    else:
        found = LaunchEnv("single", 0, 1, 0, "127.0.0.1", _free_port())
    for key, value in (
        ("RANK", found.rank),
        ("WORLD_SIZE", found.world_size),
        ("LOCAL_RANK", found.local_rank),
        ("MASTER_ADDR", found.master_addr),
        ("MASTER_PORT", found.master_port),
    ):
        os.environ.setdefault(key, str(value))
    return found


def _from_slurm(env) -> LaunchEnv:
    nodelist = env.get("SLURM_STEP_NODELIST") or env["SLURM_JOB_NODELIST"]
    job_id = int(env.get("SLURM_JOB_ID", "0"))
    return LaunchEnv(
        launcher="slurm",
        rank=int(env["SLURM_PROCID"]),
        world_size=int(env["SLURM_STEP_NUM_TASKS"]),
        local_rank=int(env.get("SLURM_LOCALID", 0)),
        master_addr=env.get("MASTER_ADDR") or first_host(nodelist),
        master_port=int(env.get("MASTER_PORT") or 20000 + job_id % 20000),
    )


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list (``node[3-5,9],gpu1`` -> ``node3``), via scontrol when present."""
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    match = re.match(r"([^,\[]+)(?:\[(\d+))?", nodelist)
    if match is None:
        raise ValueError(f"cannot read a host from SLURM node list {nodelist!r}")
    return match.group(1) + (match.group(2) or "")


def _from_mpi() -> LaunchEnv:
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    node = world.Split_type(MPI.COMM_TYPE_SHARED)
    rendezvous = (socket.gethostname(), _free_port()) if world.Get_rank() == 0 else None
    host, port = world.bcast(rendezvous, root=0)
    env = LaunchEnv("mpi", world.Get_rank(), world.Get_size(), node.Get_rank(), host, port)
    node.Free()
    return env


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]
