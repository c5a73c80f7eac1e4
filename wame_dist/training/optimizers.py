"""The four update rules of the paper as DeepSpeed optimizer blocks, with their documented default rates,
and the same blocks built as torch optimizers (for FSDP2).

SGD with momentum and RMSprop are torch's (DeepSpeed builds any ``torch.optim`` class named by "type"),
Adam is DeepSpeed's own (its fused CPU/GPU kernels, DeepSpeedCPUAdam under offload) in plain Adam mode
(DeepSpeed's default is AdamW), WAME is wame_dist's.
"""

from __future__ import annotations

from typing import Any

import torch

from wame_dist.errors import BadInput
from wame_dist.optim import WAME

#: Default learning rates: the customary ones of each family (the paper gives none). The experiment's
#: ``tune`` step replaces them with rates chosen on the validation set.
DEFAULT_LR = {"wame": 1e-3, "adam": 1e-3, "rmsprop": 1e-3, "sgd": 1e-2}


def optimizer_block(name: str, lr: float | None = None) -> dict[str, Any]:
    """The DeepSpeed config "optimizer" block of update rule ``name`` at rate ``lr``."""
    lr = DEFAULT_LR[name] if lr is None else lr
    if name == "wame":
        return {"type": "WAME", "params": {"lr": lr}}
    if name == "adam":
        return {"type": "Adam", "params": {"lr": lr, "adam_w_mode": False}}
    if name == "rmsprop":  # alpha 0.9: the decay the paper (and Hinton's lecture) use for RMSprop
        return {"type": "RMSprop", "params": {"lr": lr, "alpha": 0.9}}
    if name == "sgd":
        return {"type": "SGD", "params": {"lr": lr, "momentum": 0.9}}
    raise ValueError(f"unknown optimizer {name!r}; expected one of {sorted(DEFAULT_LR)}")


def needs_untested_flag(block: dict[str, Any]) -> bool:
    """ZeRO accepts only DeepSpeed's own optimizers unless ``zero_allow_untested_optimizer`` is set."""
    return block.get("type", "").lower() in ("rmsprop", "sgd")


def torch_optimizer(block: dict[str, Any], params) -> torch.optim.Optimizer:
    """The optimizer an "optimizer" block names, built as ``torch.optim`` (and wame_dist) classes, for the
    engines that do not build it themselves (FSDP2). "Adam" follows DeepSpeed: AdamW unless
    ``adam_w_mode`` is false."""
    kind, options = block.get("type", "").lower(), dict(block.get("params", {}))
    if kind == "wame":
        return WAME(params, **options)
    if kind in ("adam", "adamw"):
        decoupled = options.pop("adam_w_mode", True)
        options.pop("torch_adam", None)
        return (torch.optim.AdamW if decoupled else torch.optim.Adam)(params, **options)
    if kind == "rmsprop":
        return torch.optim.RMSprop(params, **options)
    if kind == "sgd":
        return torch.optim.SGD(params, **options)
    raise BadInput(
        f"optimizer type {block.get('type')!r} is not available under --engine fsdp2; use --optimizer "
        "wame|adam|rmsprop|sgd or --engine deepspeed"
    )
