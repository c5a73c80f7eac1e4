"""Sweeps of a tiny study (digits, 1/8 width, 2 epochs; 2 seeds x 2 optimizers) on the local SLURM cluster.

* ``slurm/sweep.sh``: the initial weights of both seeds, then ONE job array of 4 tasks, each recording its
  result in the results file, then the report job; running it again submits nothing; an array index
  outside the grid and missing initial weights fail the task at once, with a clear message;
* ``wame-dist sweep`` (submitit) on SLURM: given the sbatch sweep's results of seed 0, it submits only the
  2 runs of seed 1 (one array); one of them is preempted (SIGUSR2) after its first epoch checkpoint,
  requeued and resumed; both end with exactly the sbatch sweep's results; running it again submits nothing;
* ``wame-dist sweep --cluster local``: a 2-task run (rank and world from submitit) on this machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from launching import ROOT, VENV_BIN, job_env

from wame_dist.experiment.records import StudyRecords
from wame_dist.sweep import cli

pytestmark = pytest.mark.slurm

TINY = {
    "dataset": "digits",
    "model": "table1a",
    "width": 0.125,
    "seeds": 2,
    "epochs": 2,
    "batch_size": 64,
    "optimizers": ["wame", "adam"],
    "deepspeed_config": str(ROOT / "configs" / "zero2.json"),
}
RUNS = [(seed, optimizer) for seed in (0, 1) for optimizer in ("wame", "adam")]  # grid order


def records(out: Path) -> dict[tuple[int, str], dict]:
    found = StudyRecords(out).records()
    return {(r["key"]["seed"], r["key"]["optimizer"]): r for r in found}


def metrics(record: dict) -> list[dict]:
    """Per-epoch metrics without the wall time (the only thing that may differ between equal runs)."""
    return [{k: v for k, v in e.items() if k != "wall_s"} for e in record["epochs"]]


def sweep_sh(study: Path, out: Path, *sbatch: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "slurm/sweep.sh", str(study), *sbatch],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env={**os.environ, "SWEEP_DIR": str(out)},
    )  # fmt: skip


@dataclass(frozen=True)
class SbatchSweep:
    out: Path
    array: str
    report: str
    output: str  # what slurm/sweep.sh printed


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("study") / "tiny.json"
    path.write_text(json.dumps(TINY))
    return path


@pytest.fixture(scope="module")
def sbatch_sweep(slurm_cluster, study, tmp_path_factory) -> SbatchSweep:
    out = tmp_path_factory.mktemp("sbatch") / "sweep"
    proc = sweep_sh(study, out, "--time=10")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    found = re.search(r"submitted array job (\d+) \(tasks 0-3\) and report job (\d+)", output)
    assert found, output
    array, report = found.groups()
    slurm_cluster.wait(array, timeout=600)
    slurm_cluster.wait(report, timeout=120)
    return SbatchSweep(out, array, report, output)


def task_states(cluster, array: str, tasks: int, timeout: float = 30) -> dict[str, str]:
    """The states of the array's tasks by ID, once sacct lists each under its own (right after the end
    it may still list one under the array's ID)."""
    deadline = time.monotonic() + timeout
    while len(states := cluster.states(array)) < tasks and time.monotonic() < deadline:
        time.sleep(0.5)
    return states


def init_weights(out: Path, seed: int) -> Path:
    return out / "init" / f"digits-table1a-w0.125-seed{seed}.pt"


def log_of(path: Path) -> str:
    return path.read_text() if path.exists() else f"(no {path})"


def test_sbatch_sweep_is_one_array_of_every_run(slurm_cluster, sbatch_sweep):
    out, array = sbatch_sweep.out, sbatch_sweep.array
    logs = "\n".join(log_of(out / "logs" / f"{array}_{i}.out") for i in range(4))
    assert task_states(slurm_cluster, array, 4) == {f"{array}_{i}": "COMPLETED" for i in range(4)}, logs
    grid = [line.split("\t")[:3] for line in (out / "grid.tsv").read_text().splitlines()[1:]]
    assert grid == [[str(i), str(seed), name] for i, (seed, name) in enumerate(RUNS)]
    found = records(out)
    assert sorted(found) == sorted(RUNS), logs
    for (seed, _), record in found.items():
        assert record["settings"]["role"] == "final"
        assert record["settings"]["init_weights"] == str(init_weights(out, seed))
        assert len(record["epochs"]) == 2
    # Both optimizers of a seed start from the same weights, written once before the array started.
    assert found[0, "wame"]["init_hash"] == found[0, "adam"]["init_hash"] != found[1, "wame"]["init_hash"]
    assert not list((out / "runs").glob("*/checkpoints"))  # recorded runs need no resuming


def test_sbatch_sweep_reports_at_the_end(slurm_cluster, sbatch_sweep):
    out, report = sbatch_sweep.out, sbatch_sweep.report
    assert slurm_cluster.state(report) == "COMPLETED", log_of(out / "logs" / f"report-{report}.out")
    written = {p.name for p in (out / "report").iterdir()}
    assert {"table2.md", "friedman.md", "figure1_digits_table1a.png"} <= written
    assert "WAME" in (out / "report" / "table2.md").read_text()
    union = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert union == StudyRecords(out).records() and len(union) == len(RUNS)


def test_sbatch_sweep_again_submits_nothing(sbatch_sweep, study):
    proc = sweep_sh(study, sbatch_sweep.out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4 runs, 4 recorded, 0 to run" in proc.stderr
    assert "nothing to submit" in proc.stdout
    assert "submitted" not in proc.stdout


def test_sbatch_sweep_task_bad_input_fails_at_once(slurm_cluster, sbatch_sweep, tmp_path):
    out = sbatch_sweep.out
    init = init_weights(out, 1)
    shutil.move(init, tmp_path / init.name)
    try:
        cases = {
            "9": "error: array index 9 is outside the grid of {out}: its indices are 0-3 (see grid.tsv)",
            "2": "error: the initial weights of seed 1 are missing: {init}",
        }
        jobs = {
            index: slurm_cluster.submit(
                [f"--array={index}", f"--output={tmp_path}/%a.out", "slurm/sweep.sh", "task", str(out)],
                cwd=ROOT,
            )
            for index in cases
        }
        for index, message in cases.items():
            state = slurm_cluster.wait(jobs[index], timeout=120)
            log = log_of(tmp_path / f"{index}.out")
            assert state == "FAILED", log
            assert message.format(out=out, init=init) in log
            assert "rendezvous" not in log
    finally:
        shutil.move(tmp_path / init.name, init)


@dataclass(frozen=True)
class SubmititSweep:
    out: Path
    preempted: str  # job ID
    returncode: int
    output: str


@pytest.fixture(scope="module")
def submitit_sweep(slurm_cluster, sbatch_sweep, study, tmp_path_factory) -> SubmititSweep:
    """`wame-dist sweep` on SLURM, given the sbatch sweep's results of seed 0; the wame run of seed 1 is
    preempted (SIGUSR2, submitit's signal) after its first epoch checkpoint. (With --time 30 submitit takes
    a signal in the first 10 minutes for a preemption, later ones for the time limit: both requeue.)"""
    out = tmp_path_factory.mktemp("submitit") / "sweep"
    out.mkdir()
    for record in StudyRecords(sbatch_sweep.out).records():
        if record["key"]["seed"] == 0:
            StudyRecords(out).add(record)
    output = out.parent / "output.txt"
    command = [str(VENV_BIN / "wame-dist"), "sweep", str(study), "--out", str(out), "--cluster", "slurm"]
    with open(output, "w") as sink:
        proc = subprocess.Popen(
            [*command, "--time", "30"], stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT, env=job_env()
        )
    try:
        name = "digits-table1a-wame-seed1-lr0.001"
        submitted = rf"submitted job (\S+): {name}"
        (job_id,) = poll(lambda: re.findall(submitted, output.read_text()), proc, output)
        poll((out / "runs" / name / "checkpoints" / "epoch0001" / "COMPLETE").exists, proc, output)
        assert not (out / "runs" / name / "result.json").exists(), "the run ended before its preemption"
        subprocess.run(["scancel", "--signal=USR2", job_id], check=True, capture_output=True)
        returncode = proc.wait(timeout=600)
    finally:
        proc.kill()
    return SubmititSweep(out, job_id, returncode, output.read_text())


def poll(condition, proc: subprocess.Popen, output: Path, timeout: float = 600):
    """``condition()`` once it is true; fails if the process ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert proc.poll() is None, f"wame-dist sweep ended first:\n{log_of(output)}"
        assert time.monotonic() < deadline, f"timed out:\n{log_of(output)}"
        time.sleep(0.1)
    return found


def test_submitit_sweep_runs_only_the_missing_runs(submitit_sweep):
    assert submitit_sweep.returncode == 0, submitit_sweep.output
    submitted = re.findall(r"submitted job (\d+)_(\d): (\S+)", submitit_sweep.output)
    assert [name for _, _, name in submitted] == [
        "digits-table1a-wame-seed1-lr0.001",
        "digits-table1a-adam-seed1-lr0.001",
    ]
    assert len({array for array, _, _ in submitted}) == 1  # one job array
    assert (submitit_sweep.out / "report" / "table2.md").exists()


def test_submitit_sweep_preempted_run_resumes_to_the_same_result(submitit_sweep, sbatch_sweep):
    job = submitit_sweep.preempted
    logs = "".join(p.read_text() for p in (submitit_sweep.out / "logs" / job).glob("*_log.*"))
    assert "Caught signal SIGUSR2" in logs and "this job is preempted" in logs, logs
    assert f"Requeued job {job}" in logs, logs
    ours, theirs = records(submitit_sweep.out), records(sbatch_sweep.out)
    assert sorted(ours) == sorted(RUNS)
    for run in RUNS:
        assert metrics(ours[run]) == metrics(theirs[run]), run
        assert ours[run]["init_hash"] == theirs[run]["init_hash"]
        assert ours[run]["settings"]["role"] == "final"


def test_submitit_sweep_again_submits_nothing(submitit_sweep, study, capsys):
    assert cli.main([str(study), "--out", str(submitit_sweep.out), "--cluster", "slurm"]) == 0
    assert "all 4 runs are recorded: nothing to submit" in capsys.readouterr().out


def test_submitit_local_cluster_two_tasks(study, tmp_path, capsys):
    one = tmp_path / "one.json"
    one.write_text(json.dumps({**TINY, "seeds": 1, "epochs": 1, "optimizers": ["wame"]}))
    out = tmp_path / "sweep"
    command = [str(one), "--out", str(out), "--cluster", "local", "--tasks-per-node", "2", "--time", "10"]
    assert cli.main(command) == 0, capsys.readouterr().out
    logs = "".join(p.read_text() for p in (out / "logs").rglob("*.err"))
    assert "2 rank(s)" in logs, logs
    assert list(records(out)) == [(0, "wame")]
    assert (out / "report" / "table2.md").exists()


def test_submitit_failed_run_is_listed_and_retried_alone(tmp_path, capsys):
    """A run whose data is missing fails: the sweep names it, its error and its log, and exits 1; nothing
    is recorded, and the same command again submits just that run."""
    empty = tmp_path / "mnist"
    empty.mkdir()
    study = tmp_path / "mnist.json"
    spec = {
        **TINY,
        "dataset": "mnist",
        "data_dir": str(empty),
        "seeds": 1,
        "epochs": 1,
        "optimizers": ["wame"],
    }
    study.write_text(json.dumps(spec))
    out = tmp_path / "sweep"
    command = [str(study), "--out", str(out), "--cluster", "local", "--time", "10"]
    assert cli.main(command) == 1
    output = capsys.readouterr().out
    assert "1 run(s) failed; run the same command again to retry only them:" in output, output
    assert "mnist-table1a-wame-seed0-lr0.001 (job " in output
    assert "DataNotFound: MNIST data not found: missing train-images-idx3-ubyte" in output
    assert not (out / "records").exists() and not (out / "results.jsonl").exists()
    assert cli.main(command) == 1
    assert f"{out}: 1 runs, 1 to run" in capsys.readouterr().out
