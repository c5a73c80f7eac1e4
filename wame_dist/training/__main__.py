"""Train a Table 1 network with WAME (or a baseline) under DeepSpeed or FSDP2: the project's entry point.

    python -m wame_dist.training --deepspeed_config configs/zero2.json --dataset digits
    torchrun --nproc_per_node 2 -m wame_dist.training --deepspeed_config configs/zero2.json
    deepspeed --num_gpus 2 launch/train.py --deepspeed_config configs/zero2.json   (the same, as a script)
    mpirun -n 2 python -m wame_dist.training --deepspeed_config configs/zero2.json
    srun python -m wame_dist.training --deepspeed_config configs/zero2.json        (inside an allocation)
    torchrun --nproc_per_node 2 -m wame_dist.training --engine fsdp2 --deepspeed_config configs/zero2.json

The module is the same under every launcher (wame_dist.launch_env finds rank and rendezvous). Options:
``python -m wame_dist.training --help`` (generated from :class:`wame_dist.training.config.RunConfig`).
Rank 0 prints progress and writes metrics.jsonl, result.json and checkpoints/ under --out-dir; a run
started again with the same --out-dir resumes from its newest complete checkpoint. Bad input (a missing
data folder, a config that cannot work) ends every rank with one line on stderr and exit status 2;
``--check`` finds it in one process, without starting any rank (the SLURM templates run it first).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from wame_dist.errors import run_command
from wame_dist.training.config import parse_command
from wame_dist.training.loop import check, train


def _train(argv: Sequence[str]) -> int:
    run, check_only = parse_command(list(argv))
    if check_only:
        print(f"checked: {check(run)}")
    else:
        train(run)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_command("python -m wame_dist.training", _train, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
