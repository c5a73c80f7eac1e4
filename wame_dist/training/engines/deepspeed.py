"""The DeepSpeed engine (ZeRO stages, offload, DeepSpeed's mixed precision) as a training engine."""

from __future__ import annotations

import datetime
import functools
from pathlib import Path
from typing import Any

import deepspeed
import torch
import torch.distributed as dist

import wame_dist.deepspeed
from wame_dist.deepspeed.config import micro_batch_size
from wame_dist.launch_env import LaunchEnv
from wame_dist.training import lr_decay
from wame_dist.training.config import RunConfig
from wame_dist.training.ds_setup import run_deepspeed_config


class DeepSpeedEngine:
    def __init__(self, run: RunConfig, launch: LaunchEnv):
        deepspeed.init_distributed(timeout=datetime.timedelta(seconds=run.timeout_s))
        self.device = torch.device(deepspeed.get_accelerator().device_name(launch.local_rank))
        world = dist.get_world_size()
        self.config = run_deepspeed_config(run, world)  # bad configs and batch sizes fail here
        self.optimizer_block = self.config["optimizer"]
        self.micro_batch = micro_batch_size(self.config, world)
        self.compile = run.compile
        self.lr_decay = run.optimizer.lr_decay

    def build(self, model: torch.nn.Module) -> None:
        """DeepSpeed's engine; a Keras rate decay is its client scheduler (stepped by DeepSpeed after each
        optimizer step it takes, and saved in its checkpoints)."""
        decay = functools.partial(lr_decay.scheduler, decay=self.lr_decay) if self.lr_decay else None
        self.engine, *_ = wame_dist.deepspeed.initialize(
            model=model, model_parameters=model.parameters(), config=self.config, lr_scheduler=decay
        )
        if self.compile:
            self.engine.compile()  # torch.compile under DeepSpeed's hooks
        bf16, fp16 = self.engine.bfloat16_enabled(), self.engine.fp16_enabled()
        self.dtype = torch.bfloat16 if bf16 else torch.float16 if fp16 else None  # the weights' dtype

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.engine(x.to(self.dtype) if self.dtype is not None else x)

    def train(self) -> None:
        self.engine.train()

    def eval(self) -> None:
        self.engine.eval()

    def step(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)
        self.engine.step()

    @property
    def global_steps(self) -> int:
        return self.engine.global_steps

    def save(self, path: Path, client_state: dict[str, Any]) -> None:
        """DeepSpeed's checkpoint of every rank in ``path``; the client state goes into its model states."""
        self.engine.save_checkpoint(
            str(path.parent), tag=path.name, client_state=client_state, save_latest=False
        )

    def load(self, path: Path) -> dict[str, Any]:
        _, client_state = self.engine.load_checkpoint(str(path.parent), tag=path.name)
        return client_state
