"""The DeepSpeed config of one run: the file named by ``--deepspeed_config`` with the command line's
overrides, built and checked by :func:`wame_dist.deepspeed.config.engine_config` before anything starts."""

from __future__ import annotations

from typing import Any

from wame_dist.deepspeed.config import engine_config
from wame_dist.training.config import RunConfig
from wame_dist.training.optimizers import optimizer_block


def run_deepspeed_config(run: RunConfig, world_size: int | None) -> dict[str, Any]:
    """The config both engines train with on ``world_size`` ranks (None: the batch is not checked against
    it): ``--optimizer`` as its rule's block (else ``--lr`` and ``--optimizer-params`` over the file's
    block), ``--precision`` and ``--batch-size``."""
    chosen = run.optimizer
    overrides = {**(chosen.params or {}), **({} if chosen.lr is None else {"lr": chosen.lr})}
    return engine_config(
        run.deepspeed_config,
        world_size,
        optimizer=None if chosen.name is None else optimizer_block(chosen.name, chosen.lr, chosen.params),
        optimizer_overrides=overrides,
        precision=run.precision,
        train_batch_size=run.batch_size,
        fp16_check=run.engine == "deepspeed",  # FSDP2 has no fp16 path of its own and refuses it (fsdp2.py)
    )
