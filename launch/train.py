"""Train a Table 1 network with WAME (or a baseline) under DeepSpeed or FSDP2: the project's entry point.

    deepspeed --num_gpus 2 launch/train.py --deepspeed_config configs/zero2.json --dataset digits
    torchrun --nproc_per_node 2 launch/train.py --deepspeed_config configs/zero2.json
    mpirun -n 2 python launch/train.py --deepspeed_config configs/zero2.json
    srun python launch/train.py --deepspeed_config configs/zero2.json        (inside an allocation)
    torchrun --nproc_per_node 2 launch/train.py --engine fsdp2 --deepspeed_config configs/zero2.json

The script is the same under every launcher (wame_dist.launch_env finds rank and rendezvous). Options:
``python launch/train.py --help``. Rank 0 prints progress and writes metrics.jsonl, result.json and
checkpoints/ under --out-dir; a run started again with the same --out-dir resumes from its newest
complete checkpoint.
"""

from __future__ import annotations

import sys

from wame_dist.errors import BadInput
from wame_dist.training import parse_args, train


def main(argv: list[str] | None = None) -> int:
    run = parse_args(argv)
    try:
        train(run)
    except BadInput as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
