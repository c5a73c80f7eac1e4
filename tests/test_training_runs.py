"""launch/train.py for real: every launcher, resuming, faults, synchronised initial weights, bad input.

Runs use the digits data, Table 1a at 1/8 width and ZeRO-2 on 2 ranks; several tests share one run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from importlib import metadata
from pathlib import Path

import pytest
import torch
from launching import ROOT, TESTS, VENV_BIN, job_env, run, torchrun

pytestmark = pytest.mark.multirank

TRAIN = ROOT / "launch" / "train.py"
CONFIG = str(ROOT / "configs" / "zero2.json")
EPOCHS = 3


def train_args(out: Path, *extra: str, epochs: int = EPOCHS) -> list[str]:
    return [
        "--deepspeed_config", CONFIG, "--dataset", "digits", "--width", "0.125", "--epochs", str(epochs),
        "--seed", "3", "--out-dir", str(out), *extra,
    ]  # fmt: skip


def result(out: Path) -> dict:
    return json.loads((out / "result.json").read_text())


def metrics(out: Path) -> list[dict]:
    """Per-epoch metrics without the wall time (the only thing that may differ between equal runs)."""
    return [{k: v for k, v in e.items() if k != "wall_s"} for e in result(out)["epochs"]]


def deepspeed_launcher(out: Path) -> list[str]:
    return [
        str(VENV_BIN / "deepspeed"),
        "--num_gpus",
        "2",
        "--master_port",
        "29731",
        str(TRAIN),
        *train_args(out),
    ]


def mpirun(out: Path) -> list[str]:
    return [str(VENV_BIN / "mpirun"), "-n", "2", str(VENV_BIN / "python"), str(TRAIN), *train_args(out)]


LAUNCHERS = {
    "torchrun": lambda out: torchrun(2, TRAIN, *train_args(out)),
    "deepspeed": deepspeed_launcher,
    "mpirun": mpirun,
}


@pytest.fixture(scope="module")
def launched(tmp_path_factory) -> dict[str, Path]:
    """The same 3-epoch run under each launcher."""
    outs = {}
    for name, command in LAUNCHERS.items():
        outs[name] = tmp_path_factory.mktemp(name)
        run(command(outs[name]))
    return outs


def test_every_launcher_gives_the_same_result(launched):
    reference = launched["torchrun"]
    assert len(metrics(reference)) == EPOCHS
    assert metrics(reference)[-1]["val_acc"] > 0.5
    for name, out in launched.items():
        assert metrics(out) == metrics(reference), name
        assert result(out)["init_hash"] == result(reference)["init_hash"]
        assert result(out)["settings"]["global_steps"] == result(reference)["settings"]["global_steps"]


def test_result_records_the_run(launched):
    record = result(launched["torchrun"])
    assert record["key"] == {
        "dataset": "digits",
        "model": "table1a",
        "optimizer": "wame",
        "seed": 3,
        "lr": 0.001,
    }
    assert 1 <= record["best_epoch"] <= EPOCHS
    assert record["settings"]["deepspeed_config"] == CONFIG
    lines = (launched["torchrun"] / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == EPOCHS


def test_result_records_what_produced_it(launched):
    """Provenance: code, software, machine, job shape and the effective DeepSpeed config, per launcher."""
    configured = json.loads(Path(CONFIG).read_text())
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    for name, launcher in (("torchrun", "torch"), ("deepspeed", "torch"), ("mpirun", "mpi")):
        record = result(launched[name])
        environment = record["environment"]
        assert environment["code"]["git_commit"] == head.stdout.strip()
        assert isinstance(environment["code"]["git_dirty"], bool)
        software = environment["software"]
        assert software["torch"] == metadata.version("torch")
        assert software["deepspeed"] and software["wame_dist"] and software["python"]
        assert environment["machine"]["cpu"] and environment["machine"]["gpu_count"] == 0
        assert environment["launch"] | {"argv": None, "torch_threads": None} == {
            "launcher": launcher,
            "world_size": 2,
            "nodes": 1,
            "ranks_per_node": 2,
            "torch_threads": None,
            "omp_num_threads": environment["launch"]["omp_num_threads"],
            "mkl_num_threads": environment["launch"]["mkl_num_threads"],
            "argv": None,
        }
        assert environment["signature"].startswith(f"wame_dist {software['wame_dist']} @ ")
        effective = record["settings"]["effective_config"]
        assert effective["zero_optimization"] == configured["zero_optimization"]
        assert effective["optimizer"] == configured["optimizer"]
        assert effective["train_batch_size"] == configured["train_batch_size"]


def test_crash_during_checkpoint_keeps_the_last_good_one(launched, tmp_path):
    out = tmp_path / "run"
    crashed = subprocess.run(
        torchrun(2, TESTS / "fault_worker.py", "crash-in-save:2", "--", *train_args(out)),
        capture_output=True, text=True, timeout=600, env=job_env(), cwd=ROOT,
    )  # fmt: skip
    assert crashed.returncode != 0
    checkpoints = out / "checkpoints"
    assert (checkpoints / "latest").read_text() == "epoch0001"
    assert not (checkpoints / "epoch0002" / "COMPLETE").exists()
    run(torchrun(2, TRAIN, *train_args(out)))  # the same command again resumes from epoch 1
    assert metrics(out) == metrics(launched["torchrun"])


#: A dying rank must end the job this many seconds after its death, far below the collectives' timeout.
DEATH_TO_EXIT_S, COLLECTIVE_TIMEOUT_S = 30, 600


@pytest.mark.parametrize("launcher", ["torchrun", "mpirun"])
def test_a_dying_rank_ends_the_job_within_seconds(launcher, tmp_path):
    """The survivor notices the dead peer and the launcher ends the job long before ``--timeout``."""
    timeout = ["--timeout", str(COLLECTIVE_TIMEOUT_S)]
    fault = [str(TESTS / "fault_worker.py"), "die:1:3", "--", *train_args(tmp_path, *timeout)]
    if launcher == "torchrun":
        command = torchrun(2, *[Path(fault[0])], *fault[1:])
    else:
        command = [str(VENV_BIN / "mpirun"), "-n", "2", str(VENV_BIN / "python"), *fault]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, env=job_env(), cwd=ROOT)
    ended = time.time()
    assert proc.returncode != 0
    died = float((tmp_path / "died_at").read_text())
    assert ended - died < DEATH_TO_EXIT_S, f"the job outlived its dead rank by {ended - died:.0f} s"


def test_ranks_with_different_weights_fail_loudly(tmp_path):
    proc = subprocess.run(
        torchrun(2, TESTS / "fault_worker.py", "skew-init:1", "--", *train_args(tmp_path)),
        capture_output=True, text=True, timeout=300, env=job_env(), cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "initial weights differ between ranks" in proc.stderr
    assert not (tmp_path / "metrics.jsonl").exists()


def single(out: Path, *extra: str, config: str = CONFIG) -> subprocess.CompletedProcess:
    """A one-process run of ``python -m wame_dist.training`` (a world of one)."""
    args = train_args(out, *extra, epochs=1)
    args[1] = config
    return subprocess.run(
        [str(VENV_BIN / "python"), "-m", "wame_dist.training", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=job_env(),
        cwd=ROOT,
    )


def test_optimizers_start_from_the_same_init_weights_file(tmp_path):
    weights = tmp_path / "seed3.pt"
    made = subprocess.run(
        [str(VENV_BIN / "wame-dist"), "init-weights", "--dataset", "digits", "--width", "0.125",
         "--seed", "3",
         "--out", str(weights)], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    hashes = {}
    # the second rule with Keras's rate decay and its published epsilon given as an optimizer argument
    extra = {"wame": (), "wame_keras": ("--lr-decay", "0.01", "--optimizer-params", '{"eps": 1e-10}')}
    for optimizer, options in extra.items():
        out = tmp_path / optimizer
        proc = single(out, "--optimizer", optimizer, "--init-weights", str(weights), *options)
        assert proc.returncode == 0, proc.stderr[-3000:]
        hashes[optimizer] = result(out)["init_hash"]
        assert result(out)["key"]["optimizer"] == optimizer
    assert hashes["wame"] == hashes["wame_keras"] == made.stdout.split()[-1]
    keras = tmp_path / "wame_keras"
    steps = result(keras)["settings"]["global_steps"]
    assert result(keras)["settings"]["optimizer"] == {
        "name": "wame_keras", "lr": None, "params": {"eps": 1e-10}, "lr_decay": 0.01
    }  # fmt: skip
    (model_states,) = (keras / "checkpoints").glob("epoch0001/mp_rank_00_model_states.pt")
    scheduler = torch.load(model_states, weights_only=False)["lr_scheduler"]
    assert scheduler["last_epoch"] == steps > 0  # DeepSpeed stepped the decay once per optimizer step
    assert scheduler["_last_lr"] == [pytest.approx(1e-3 / (1 + 0.01 * steps), rel=1e-12)]


def assert_refused(proc: subprocess.CompletedProcess, message: str, out: Path) -> None:
    """Exit 2, the message on one line of stderr (and only there), no traceback, nothing trained."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert [line for line in proc.stderr.splitlines() if message in line] != [], proc.stderr[-3000:]
    assert len([line for line in proc.stderr.splitlines() if "error:" in line]) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and message not in proc.stdout
    assert not (out / "metrics.jsonl").exists(), "nothing may be trained"


def test_bad_input_fails_before_training_with_one_line(tmp_path):
    proc = single(tmp_path / "a", config=str(tmp_path / "missing.json"))
    assert_refused(proc, f"DeepSpeed config '{tmp_path / 'missing.json'}' does not exist", tmp_path / "a")
    proc = single(tmp_path / "b", "--init-weights", str(tmp_path / "none.pt"))
    assert_refused(proc, "write it with `wame-dist init-weights --out", tmp_path / "b")
    proc = single(tmp_path / "c", "--dataset", "cifar10", "--data-dir", str(tmp_path / "no-cifar"))
    missing = f"in {tmp_path / 'no-cifar' / 'cifar-10-batches-py'}. Put the files there"
    assert_refused(proc, missing, tmp_path / "c")
    proc = single(tmp_path / "d", "--width", "-1")
    assert_refused(proc, "--width must be a positive number, not -1.0", tmp_path / "d")


def test_checkpoint_of_another_run_is_refused(launched, tmp_path):
    out = tmp_path / "other"
    shutil.copytree(launched["torchrun"] / "checkpoints", out / "checkpoints")
    proc = single(out, "--optimizer", "adam")
    assert proc.returncode == 2
    assert "was written by another run (optimizer" in proc.stderr
