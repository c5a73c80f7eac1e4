"""``wame_dist.deepspeed.initialize``: ``deepspeed.initialize`` after :func:`register`, with WAME's checks."""

from __future__ import annotations

import argparse
import functools
from typing import Any

import deepspeed

from wame_dist.deepspeed import config as ds_config
from wame_dist.deepspeed.registration import register
from wame_dist.optim import WAME


def initialize(
    args: Any = None,
    model: Any = None,
    optimizer: Any = None,
    model_parameters: Any = None,
    training_data: Any = None,
    lr_scheduler: Any = None,
    distributed_port: int = 29500,
    mpu: Any = None,
    dist_init_required: bool | None = None,
    collate_fn: Any = None,
    config: Any = None,
    mesh_param: Any = None,
    config_params: Any = None,
):
    """Same arguments and return value as ``deepspeed.initialize`` (engine, optimizer, dataloader,
    lr_scheduler), which it calls after :func:`wame_dist.deepspeed.register`.

    A config (``config``, ``config_params`` or ``args.deepspeed_config``) that selects ``"type": "WAME"`` is
    checked before DeepSpeed starts (unknown keys, bad values) and refused together with an ``optimizer``
    argument. A WAME instance (or a callable that builds one) passed as ``optimizer`` gets the config a
    client optimizer needs (:func:`wame_dist.deepspeed.config.engine_config`). Anything else goes to
    DeepSpeed unchanged.
    """
    register()
    common = {
        "model": model,
        "model_parameters": model_parameters,
        "training_data": training_data,
        "lr_scheduler": lr_scheduler,
        "distributed_port": distributed_port,
        "mpu": mpu,
        "dist_init_required": dist_init_required,
        "collate_fn": collate_fn,
        "mesh_param": mesh_param,
    }
    source = next((c for c in (config, config_params, getattr(args, "deepspeed_config", None)) if c), None)
    if source is None:
        raise ds_config.ConfigError("no DeepSpeed config: pass config=..., or --deepspeed_config FILE")
    loaded = ds_config.read_config(source)

    if ds_config.names_wame(loaded):
        if optimizer is not None:
            raise ds_config.ConfigError(
                "an optimizer was given both in the DeepSpeed config (an 'optimizer' block of type WAME) and "
                "as the optimizer argument; keep one of them"
            )
        ds_config.wame_builder(loaded["optimizer"].get("params"))  # bad blocks fail before DeepSpeed starts
    elif not _is_wame(optimizer):
        return deepspeed.initialize(
            args=args, optimizer=optimizer, config=config, config_params=config_params, **common
        )
    else:
        loaded = ds_config.engine_config(loaded, client_optimizer=True)

    if getattr(args, "deepspeed_config", None) is not None:
        args = argparse.Namespace(**{**vars(args), "deepspeed_config": None})  # DeepSpeed refuses two configs
    return deepspeed.initialize(args=args, optimizer=optimizer, config=loaded, **common)


def _is_wame(optimizer: Any) -> bool:
    target = optimizer.func if isinstance(optimizer, functools.partial) else optimizer
    return isinstance(optimizer, WAME) or (isinstance(target, type) and issubclass(target, WAME))
