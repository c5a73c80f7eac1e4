"""One run of a study: what it is, where it lives, the command that trains it, and carrying it out.

A run is (dataset, model, optimizer, seed, lr) plus its role: ``tune`` (choosing a learning rate) or
``final`` (the reported runs). Its :class:`~wame_dist.training.config.RunConfig` is built here
(:func:`run_config`); it trains with ``python -m wame_dist.training`` in its own process(es), from the
seed's initial-weights file, in its own folder; started again after being killed, it resumes from its last
epoch checkpoint (the training module does that) and ends with the identical result.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wame_dist.experiment.records import StudyRecords
from wame_dist.experiment.study import StudyConfig
from wame_dist.report.record import KEY_FIELDS, RESULT_FILE, Key, run_name
from wame_dist.training.config import DataConfig, ModelConfig, OptimizerConfig, RunConfig
from wame_dist.training.init_weights import initial_network, network_settings, save_init_weights


@dataclass(frozen=True)
class RunSpec:
    optimizer: str
    seed: int
    lr: float
    role: str  # "tune" or "final"

    def name(self, study: StudyConfig) -> str:
        """Its folder's and record's name (:func:`wame_dist.report.record.run_name`)."""
        return run_name(dict(zip(KEY_FIELDS, self.key(study), strict=True)))

    def key(self, study: StudyConfig) -> Key:
        """Its record's key (:func:`wame_dist.report.record.key_of`)."""
        return study.dataset, study.network, self.optimizer, self.seed, float(self.lr)


class RunFailed(RuntimeError):
    """A run's process exited with an error; the message holds the end of its log."""


def init_weights_path(study: StudyConfig, out: Path, seed: int) -> Path:
    return out / "init" / f"{study.dataset}-{study.network}-w{study.width:g}-seed{seed}.pt"


def run_dir(study: StudyConfig, spec: RunSpec, out: Path) -> Path:
    """The run's folder: its log, metrics, result.json and checkpoints."""
    return out / "runs" / spec.name(study)


def write_init_weights(study: StudyConfig, out: Path, seed: int) -> Path:
    """Draws the seed's initial weights once (an existing file is kept: every optimizer shares it)."""
    path = init_weights_path(study, out, seed)
    if not path.exists():
        settings = network_settings(study.dataset, study.network, study.width)
        save_init_weights(path, initial_network(settings, seed), {**settings, "seed": seed})
    return path


def run_config(study: StudyConfig, spec: RunSpec, out: Path) -> RunConfig:
    """The training run of ``spec`` in ``study``, in its folder under ``out``."""
    return RunConfig(
        deepspeed_config=study.deepspeed_config,
        data=DataConfig(study.dataset, study.data_dir),
        model=ModelConfig(study.network, study.width),
        optimizer=OptimizerConfig(
            spec.optimizer,
            spec.lr,
            study.optimizer_params.get(spec.optimizer),
            study.lr_decay.get(spec.optimizer, 0.0),
        ),
        batch_size=study.batch_size,
        epochs=study.tune.epochs if spec.role == "tune" else study.epochs,
        seed=spec.seed,
        init_weights=str(init_weights_path(study, out, spec.seed)),
        out_dir=str(run_dir(study, spec, out)),
    )


def train_command(study: StudyConfig, spec: RunSpec, out: Path) -> list[str]:
    """The training module for this run: one process, or torchrun with ``ranks_per_run`` processes."""
    args = ["-m", "wame_dist.training", *run_config(study, spec, out).to_argv()]
    if study.ranks_per_run == 1:
        return [sys.executable, *args]
    torchrun = Path(sys.executable).with_name("torchrun")
    return [str(torchrun), "--standalone", "--nproc_per_node", str(study.ranks_per_run), *args]


def execute(study: StudyConfig, spec: RunSpec, out: Path) -> Path:
    """Trains the run to its end (resuming if it was interrupted); returns its folder (with result.json)."""
    folder = run_dir(study, spec, out)
    folder.mkdir(parents=True, exist_ok=True)
    # This interpreter's bin first on PATH: its ninja builds the JIT extensions (another would rebuild them).
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "PATH": path, "OMP_NUM_THREADS": str(study.threads_per_run)}
    with open(folder / "log.txt", "a") as log:
        proc = subprocess.run(train_command(study, spec, out), stdout=log, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        tail = (folder / "log.txt").read_text()[-3000:]
        raise RunFailed(f"run {spec.name(study)} failed (exit {proc.returncode}); end of its log:\n{tail}")
    return folder


def record_result(study: StudyConfig, spec: RunSpec, out: Path) -> dict[str, Any]:
    """Files the finished run's ``result.json``, with its role, as its record in ``out``
    (:class:`~wame_dist.experiment.records.StudyRecords`), then deletes its checkpoints, no longer needed.
    Returns the record."""
    folder = run_dir(study, spec, out)
    record = json.loads((folder / RESULT_FILE).read_text())
    record["settings"]["role"] = spec.role
    StudyRecords(out).add(record)
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)
    return record
