"""The DeepSpeed config of one run: the file, plus the run's overrides, checked before anything starts."""

from __future__ import annotations

from typing import Any

from wame_dist.deepspeed.config import ConfigError, read_config
from wame_dist.training.config import RunConfig
from wame_dist.training.optimizers import needs_untested_flag, optimizer_block


def run_deepspeed_config(run: RunConfig, world_size: int) -> dict[str, Any]:
    """Reads ``run.deepspeed_config`` and applies the command line's optimizer, rate, precision and batch."""
    config = read_config(run.deepspeed_config)
    if run.optimizer.name is not None:
        config["optimizer"] = optimizer_block(run.optimizer.name, run.optimizer.lr, run.optimizer.params)
    elif run.optimizer.lr is not None or run.optimizer.params:
        if "optimizer" not in config:
            raise ConfigError(
                "--lr and --optimizer-params need an optimizer: add --optimizer or an 'optimizer' block to "
                f"{run.deepspeed_config}"
            )
        overrides = {
            **(run.optimizer.params or {}),
            **({} if run.optimizer.lr is None else {"lr": run.optimizer.lr}),
        }
        config["optimizer"].setdefault("params", {}).update(overrides)
    if "optimizer" not in config:
        raise ConfigError(f"{run.deepspeed_config} has no 'optimizer' block; add one or pass --optimizer")
    if needs_untested_flag(config["optimizer"]):
        config["zero_allow_untested_optimizer"] = True
    if run.precision is not None:  # bf16/fp16: DeepSpeed's mixed precision (fp32 master weights in WAME);
        # bf16-autocast: fp32 weights, the forward pass under torch.autocast (DeepSpeed's "torch_autocast")
        config["bf16"] = {**config.get("bf16", {}), "enabled": run.precision == "bf16"}
        config["fp16"] = {**config.get("fp16", {}), "enabled": run.precision == "fp16"}
        config["torch_autocast"] = {"enabled": run.precision == "bf16-autocast", "dtype": "bfloat16"}
    if run.engine == "deepspeed":  # FSDP2 has no fp16 path of its own and refuses it (engines/fsdp2.py)
        check_fp16(config, run.deepspeed_config)
    if run.batch_size is not None:
        config["train_batch_size"] = run.batch_size
        config.pop("train_micro_batch_size_per_gpu", None)
    check_batch(config, world_size, run.deepspeed_config)
    return config


def check_fp16(config: dict[str, Any], source: str) -> None:
    """Fails early, saying what to do, where DeepSpeed's accelerator would refuse the config's fp16 (its CPU
    accelerator does on CPUs without native fp16 arithmetic) only once the engine is built."""
    if not config.get("fp16", {}).get("enabled", False):
        return
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    if not accelerator.is_fp16_supported():
        raise ConfigError(
            f"fp16 is enabled (--precision fp16 or the fp16 block of {source}) but DeepSpeed does not "
            f"support fp16 on this machine's {accelerator.device_name()} accelerator; use --precision bf16, "
            "bf16-autocast or fp32"
        )


def check_batch(config: dict[str, Any], world_size: int, source: str) -> None:
    """Fails early, saying what to do, when the batch cannot be split evenly over the ranks."""
    total = config.get("train_batch_size")
    accumulation = config.get("gradient_accumulation_steps", 1)
    micro = config.get("train_micro_batch_size_per_gpu")
    if total is None and micro is None:
        raise ConfigError(f"{source} sets neither train_batch_size nor train_micro_batch_size_per_gpu")
    for name, value in (("train_batch_size", total), ("train_micro_batch_size_per_gpu", micro)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ConfigError(f"{name} must be a positive integer, not {value!r} (--batch-size or {source})")
    if total is not None and micro is None and total % (accumulation * world_size):
        raise ConfigError(
            f"train_batch_size {total} cannot be split over {world_size} rank(s) x {accumulation} "
            f"accumulation step(s); use a batch size that is a multiple of {accumulation * world_size} "
            "(--batch-size) or another number of ranks"
        )
    if total is not None and micro is not None and total != micro * accumulation * world_size:
        raise ConfigError(
            f"train_batch_size {total} != train_micro_batch_size_per_gpu {micro} x "
            f"gradient_accumulation_steps {accumulation} x {world_size} rank(s); drop one from {source}"
        )


def micro_batch_size(config: dict[str, Any], world_size: int) -> int:
    accumulation = config.get("gradient_accumulation_steps", 1)
    return config.get("train_micro_batch_size_per_gpu") or config["train_batch_size"] // (
        accumulation * world_size
    )
