"""One run of a sweep as a submitit job: every task trains in-process, rank 0 records the result.

The callable is :class:`submitit.helpers.Checkpointable`: when SLURM preempts the job or its time is nearly
up, submitit calls :meth:`checkpoint`, which resubmits the same run, and requeues the job. The weights need
no saving then: the run resumes from its folder's last epoch checkpoint (the training module's own resume) and
ends with the result of an uninterrupted run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import submitit
import torch

from wame_dist.experiment.runs import RunSpec, record_result, run_config
from wame_dist.experiment.study import StudyConfig
from wame_dist.training import train


class TrainRun(submitit.helpers.Checkpointable):
    """``TrainRun(study, out, threads)(spec)`` trains ``spec`` of the sweep in ``out`` with ``threads`` torch
    threads per task and returns its record (the rank-0 task also appends it to the results file)."""

    def __init__(self, study: StudyConfig, out: Path, threads: int) -> None:
        self.study = study
        self.out = out
        self.threads = threads

    def __call__(self, spec: RunSpec) -> dict[str, Any]:
        # RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR (the job's first node), MASTER_PORT (from the job id).
        # Every task sees all GPUs of its node; train() picks the one of its local rank.
        env = submitit.helpers.TorchDistributedEnvironment()
        env.export(set_cuda_visible_devices=False, overwrite=True)
        # The interpreter's environment, activated: DeepSpeed builds its ops with the ninja found on PATH.
        os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        torch.set_num_threads(self.threads)
        result = train(run_config(self.study, spec, self.out))
        return record_result(self.study, spec, self.out) if env.rank == 0 else result
