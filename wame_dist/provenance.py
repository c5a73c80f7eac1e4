"""What produced a result: the code, the software, the machines and the shape of the job.

:func:`collect` is called on every rank once the process group is up and returns the same record
everywhere: rank 0 alone asks git and the packages (hundreds of ranks do not run git on a shared file
system), every rank gives its host name; the training loop stores it in ``result.json`` under
``"environment"``. :func:`signature` condenses the parts that may change the numbers (code, software,
accelerator) into one line, which the report uses to keep results of different origins apart.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

#: The packages whose versions are recorded (those absent are recorded as None).
PACKAGES = ("wame_dist", "torch", "deepspeed", "triton", "numpy")

_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def collect(launcher: str) -> dict[str, Any]:
    """The environment of this run (a collective: every rank must call it), with its :func:`signature`;
    code, software and machine are rank 0's."""
    grouped = dist.is_available() and dist.is_initialized()
    shared = [None]
    if not grouped or dist.get_rank() == 0:
        shared = [{"code": code(), "software": software(), "machine": machine()}]
    if grouped:
        dist.broadcast_object_list(shared, src=0)
    environment = {**shared[0], "launch": launch(launcher)}
    return {**environment, "signature": signature(environment)}


def code() -> dict[str, Any]:
    """The git commit of wame_dist's checkout and whether it had uncommitted changes (None outside git,
    e.g. an installed wheel: the package version then identifies the code)."""
    root = Path(__file__).resolve().parents[1]
    commit = dirty = None
    try:
        toplevel = _git(root, "rev-parse", "--show-toplevel")
        if Path(toplevel).resolve() == root:  # not some enclosing repository of an installed copy
            commit = _git(root, "rev-parse", "HEAD")
            dirty = bool(_git(root, "status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        pass
    return {"git_commit": commit, "git_dirty": dirty}


def _git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(root), *args], check=True, capture_output=True, text=True, timeout=30
    ).stdout.strip()


def software() -> dict[str, Any]:
    versions: dict[str, Any] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions["cuda"] = torch.version.cuda
    return versions


def machine() -> dict[str, Any]:
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return {
        "host": socket.gethostname(),
        "os": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if gpus else None,
        "gpu_count": gpus,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def launch(launcher: str) -> dict[str, Any]:
    """World size, nodes and ranks per node (from the ranks' host names), threads, launcher."""
    hosts: list[Any] = [socket.gethostname()]
    if dist.is_available() and dist.is_initialized():
        hosts = [None] * dist.get_world_size()
        dist.all_gather_object(hosts, socket.gethostname())
    per_node = Counter(hosts)
    return {
        "launcher": launcher,
        "world_size": len(hosts),
        "nodes": len(per_node),
        "ranks_per_node": max(per_node.values()),
        "torch_threads": torch.get_num_threads(),
        **{name.lower(): os.environ.get(name) for name in _THREAD_VARIABLES},
        "argv": sys.argv,
    }


def signature(environment: dict[str, Any]) -> str:
    """One line naming what may change the numbers: the code, the software and the accelerator.

    Two results with the same signature came from the same commit (a dirty tree counts as its own code),
    the same versions and the same kind of device; hosts, thread counts and world sizes may differ.
    """
    code_, soft, mach = environment["code"], environment["software"], environment["machine"]
    commit = code_.get("git_commit")
    code_part = f"wame_dist {soft.get('wame_dist')}"
    if commit:
        code_part += f" @ {commit[:12]}{'+dirty' if code_.get('git_dirty') else ''}"
    versions = ", ".join(f"{k} {soft.get(k)}" for k in ("python", "torch", "deepspeed") if soft.get(k))
    device = f"{mach.get('gpu_count')} x {mach.get('gpu')}" if mach.get("gpu") else f"CPU {mach.get('cpu')}"
    return f"{code_part}; {versions}; {device}"
