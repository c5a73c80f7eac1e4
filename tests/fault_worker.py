"""launch/train.py with one injected fault, for the fault-tolerance tests (never used outside them):

    python tests/fault_worker.py FAULT -- TRAIN_ARGS...

FAULT is one of
    die:RANK:STEP        rank RANK exits with status 3 just before optimizer step STEP (a crashed rank),
                         having written the time of death (time.time()) to OUT_DIR/died_at;
    crash-in-save:EPOCH  every rank dies half-way through writing the checkpoint of EPOCH (a power cut), under
                         either engine (DeepSpeed's torch.save, FSDP2's DCP save);
    skew-init:RANK       rank RANK's initial weights are perturbed (a rank that built another model).
"""

from __future__ import annotations

import os
import runpy
import sys
import time
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
from deepspeed.runtime.engine import DeepSpeedEngine

import wame_dist.training.init_weights as init_weights

TRAIN = Path(__file__).resolve().parents[1] / "launch" / "train.py"


def rank() -> int:
    """This process's rank, once wame_dist.launch_env has set it (under mpirun it is not set at start)."""
    return int(os.environ.get("RANK", "-1"))


def inject(fault: str, out_dir: Path) -> None:
    kind, *where = fault.split(":")
    if kind == "die":
        victim, at_step = map(int, where)
        original_step = DeepSpeedEngine.step

        def step(self, *args, **kwargs):
            if rank() == victim and self.global_steps + 1 == at_step:
                (out_dir / "died_at").write_text(repr(time.time()))
                os._exit(3)
            return original_step(self, *args, **kwargs)

        DeepSpeedEngine.step = step
    elif kind == "crash-in-save":
        (epoch,) = map(int, where)
        original_save = TorchCheckpointEngine.save

        def save(self, state_dict, path):
            if f"epoch{epoch:04d}" in str(path):
                Path(path).write_bytes(b"half a checkpoint")
                os._exit(4)
            return original_save(self, state_dict, path)

        TorchCheckpointEngine.save = save
        original_dcp_save = dcp.save

        def dcp_save(state_dict, *, checkpoint_id, **kwargs):
            if f"epoch{epoch:04d}" in str(checkpoint_id):
                Path(checkpoint_id).mkdir(parents=True, exist_ok=True)
                (Path(checkpoint_id) / f"__{rank()}_0.distcp").write_bytes(b"half a checkpoint")
                os._exit(4)
            return original_dcp_save(state_dict, checkpoint_id=checkpoint_id, **kwargs)

        dcp.save = dcp_save
    elif kind == "skew-init":
        (victim,) = map(int, where)
        original_network = init_weights.initial_network

        def initial_network(*args, **kwargs):
            model = original_network(*args, **kwargs)
            if rank() == victim:
                with torch.no_grad():
                    next(model.parameters()).add_(1e-3)
            return model

        init_weights.initial_network = initial_network
    else:
        raise SystemExit(f"unknown fault {fault!r}")


if __name__ == "__main__":
    fault, separator, *train_args = sys.argv[1:]
    assert separator == "--", "usage: fault_worker.py FAULT -- TRAIN_ARGS..."
    inject(fault, Path(train_args[train_args.index("--out-dir") + 1]))
    sys.argv = [str(TRAIN), *train_args]
    runpy.run_path(str(TRAIN), run_name="__main__")
