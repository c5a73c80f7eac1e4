"""``wame_dist.deepspeed.initialize``: ``deepspeed.initialize`` that understands ``"type": "WAME"``."""

from __future__ import annotations

import argparse
import functools
from typing import Any

import deepspeed

from wame_dist.deepspeed import config as ds_config
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
    lr_scheduler).

    When the config (``config``, ``config_params`` or ``args.deepspeed_config``) selects
    ``"type": "WAME"``, WAME is built from that block as a client optimizer and the config is rewritten as
    DeepSpeed needs for one (see :mod:`wame_dist.deepspeed.config`). A WAME instance (or a callable that
    builds one) passed as ``optimizer`` is made welcome the same way. Anything else goes to DeepSpeed
    unchanged, so a config naming one of DeepSpeed's own optimizers behaves exactly as before.
    """
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
        arguments = ds_config.wame_arguments(loaded)
        try:
            WAME([{"params": []}], **arguments)  # bad hyperparameters fail here, before DeepSpeed starts
        except ValueError as error:
            raise ds_config.ConfigError(
                f"the WAME optimizer block of the DeepSpeed config: {error}"
            ) from None
        optimizer = functools.partial(WAME, **arguments)  # DeepSpeed calls it with the parameters
    elif not _is_wame(optimizer):
        return deepspeed.initialize(
            args=args, optimizer=optimizer, config=config, config_params=config_params, **common
        )

    if getattr(args, "deepspeed_config", None) is not None:
        args = argparse.Namespace(**{**vars(args), "deepspeed_config": None})  # DeepSpeed refuses two configs
    engine, wrapped, dataloader, scheduler = deepspeed.initialize(
        args=args, optimizer=optimizer, config=ds_config.for_client_optimizer(loaded), **common
    )
    client_optimizer(engine).init_state()  # so DeepSpeed links the state of every group (see WAME.init_state)
    return engine, wrapped, dataloader, scheduler


def client_optimizer(engine: Any) -> WAME:
    """The WAME instance inside a DeepSpeed engine (ZeRO wraps it in its own optimizer)."""
    optimizer = engine.optimizer
    while not isinstance(optimizer, WAME):
        if not hasattr(optimizer, "optimizer"):
            raise TypeError(f"the engine's optimizer {type(engine.optimizer).__name__} does not wrap WAME")
        optimizer = optimizer.optimizer
    return optimizer


def _is_wame(optimizer: Any) -> bool:
    target = optimizer.func if isinstance(optimizer, functools.partial) else optimizer
    return isinstance(optimizer, WAME) or (isinstance(target, type) and issubclass(target, WAME))
