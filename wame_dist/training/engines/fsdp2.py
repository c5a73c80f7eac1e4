"""PyTorch's FSDP2 (``fully_shard``) as a training engine: parameters, gradients and optimizer state sharded
over the ranks (as ZeRO-3), checkpoints written with ``torch.distributed.checkpoint`` (DCP).

The run's DeepSpeed config still says batch, optimizer and precision (so ``--optimizer``, ``--lr``,
``--precision`` and ``--batch-size`` mean what they mean under DeepSpeed); the ZeRO stage is moot (FSDP2
always shards everything), and the requests FSDP2 does not carry out here are refused before anything starts.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from wame_dist import atomic
from wame_dist.deepspeed.config import ConfigError, micro_batch_size
from wame_dist.launch_env import LaunchEnv
from wame_dist.training import lr_decay
from wame_dist.training.checkpoints import CLIENT_STATE
from wame_dist.training.config import RunConfig
from wame_dist.training.ds_setup import run_deepspeed_config
from wame_dist.training.optimizers import torch_optimizer


class FSDP2Engine:
    def __init__(self, run: RunConfig, launch: LaunchEnv):
        config = run_deepspeed_config(run, launch.world_size)  # bad configs and batch sizes fail here
        check_config(config, run.deepspeed_config)
        self.config = config
        self.optimizer_block = config["optimizer"]
        self.micro_batch = micro_batch_size(config, launch.world_size)
        on_gpu = torch.cuda.is_available()
        self.device = torch.device("cuda", launch.local_rank) if on_gpu else torch.device("cpu")
        if on_gpu:
            torch.cuda.set_device(self.device)
        timeout = datetime.timedelta(seconds=run.timeout_s)
        dist.init_process_group("nccl" if on_gpu else "gloo", timeout=timeout)
        bf16 = config.get("bf16", {}).get("enabled", False)
        self.policy = MixedPrecisionPolicy(
            param_dtype=torch.bfloat16 if bf16 else None, reduce_dtype=torch.float32 if bf16 else None
        )
        self.compile = run.compile
        self.lr_decay = run.optimizer.lr_decay
        self.global_steps = 0

    def build(self, model: torch.nn.Module) -> None:
        """Shards the network, then builds the optimizer on the sharded parameters."""
        self.model = shard(model.to(self.device), self.policy)
        if self.compile:
            self.model.compile()
        self.optimizer = torch_optimizer(self.optimizer_block, self.model.parameters())
        self.scheduler = lr_decay.scheduler(self.optimizer, self.lr_decay) if self.lr_decay else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)  # bf16: FSDP2 casts the inputs to the parameters' dtype

    def train(self) -> None:
        self.model.train()

    def eval(self) -> None:
        self.model.eval()

    def step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.global_steps += 1

    def save(self, path: Path, client_state: dict[str, Any]) -> None:
        """A DCP checkpoint of the sharded weights and optimizer state in ``path`` (every rank its shards),
        and the client state (rank 0) beside it."""
        model_state, optimizer_state = get_state_dict(self.model, self.optimizer)
        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=path)
        if dist.get_rank() == 0:
            saved = {**client_state, "global_steps": self.global_steps, "world_size": dist.get_world_size()}
            if self.scheduler is not None:
                saved["lr_scheduler"] = self.scheduler.state_dict()
            atomic.torch_save(saved, path / CLIENT_STATE)

    def load(self, path: Path) -> dict[str, Any]:
        """Loads ``path`` on this world size (DCP reshards) and returns its client state."""
        model_state, optimizer_state = get_state_dict(self.model, self.optimizer)
        state = {"model": model_state, "optimizer": optimizer_state}
        dcp.load(state, checkpoint_id=path)
        set_state_dict(
            self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"]
        )
        client_state = torch.load(path / CLIENT_STATE, map_location="cpu", weights_only=False)
        self.global_steps = client_state["global_steps"]
        if self.scheduler is not None:
            self.scheduler.load_state_dict(client_state["lr_scheduler"])
        return client_state


def shard(model: torch.nn.Module, policy: MixedPrecisionPolicy) -> torch.nn.Module:
    """``fully_shard`` on each layer that has parameters, then on the whole network (which it returns)."""
    for layer in model.children():
        if any(True for _ in layer.parameters()):
            fully_shard(layer, mp_policy=policy)
    return fully_shard(model, mp_policy=policy)


def check_config(config: dict[str, Any], source: str) -> None:
    """Fails, saying what to do, on the DeepSpeed requests this engine does not carry out."""
    zero = config.get("zero_optimization", {})
    offload = [
        k for k in ("offload_optimizer", "offload_param") if zero.get(k, {}).get("device", "none") != "none"
    ]
    refusals = [
        (offload, f"zero_optimization.{' and '.join(offload)} (here FSDP2 keeps everything on the device)"),
        (config.get("fp16", {}).get("enabled"), "fp16 (DeepSpeed's loss scaling); use --precision bf16"),
        (config.get("torch_autocast", {}).get("enabled"), "bf16-autocast; use --precision bf16"),
        (config.get("gradient_accumulation_steps", 1) != 1, "gradient_accumulation_steps other than 1"),
        (config.get("gradient_clipping", 0.0), "gradient_clipping (the paper does not clip): set it to 0.0"),
        ("scheduler" in config, "a learning-rate 'scheduler' block"),
    ]
    for refused, what in refusals:
        if refused:
            raise ConfigError(
                f"--engine fsdp2 does not do {what}; drop it from {source} (or the command line), or use "
                "--engine deepspeed"
            )
