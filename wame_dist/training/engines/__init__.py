"""What runs forward, backward and step: DeepSpeed's engine or PyTorch's FSDP2, behind one small interface.

An engine is started with the run and the launch (it opens the process group and checks its settings, so
bad ones fail before any work), then ``build(model)`` shards the network and makes the optimizer. After
that the loop only uses:

* ``engine(x)`` (logits), ``engine.train()``, ``engine.eval()``, ``engine.step(loss)`` (backward and
  optimizer step), ``engine.global_steps``;
* ``engine.device``, ``engine.micro_batch`` (per rank), ``engine.config`` (the effective DeepSpeed-style
  config: the file with the run's overrides) and ``engine.optimizer_block`` (its "optimizer" block), both
  recorded in the run's result;
* ``engine.save(path, client_state)`` and ``engine.load(path) -> client_state``: one checkpoint folder
  (its place and completeness are :mod:`wame_dist.training.checkpoints`' business).
"""

from __future__ import annotations

from wame_dist.launch_env import LaunchEnv
from wame_dist.training.config import RunConfig


def start(run: RunConfig, launch: LaunchEnv):
    """The engine ``run.engine`` names, started: process group open, settings checked."""
    if run.engine == "fsdp2":
        from wame_dist.training.engines.fsdp2 import FSDP2Engine

        return FSDP2Engine(run, launch)
    from wame_dist.training.engines.deepspeed import DeepSpeedEngine

    return DeepSpeedEngine(run, launch)
