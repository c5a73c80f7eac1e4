"""DeepSpeed configs that name WAME: reading them, checking the WAME block, rewriting them for DeepSpeed.

A config selects WAME the way DeepSpeed configs select any optimizer::

    "optimizer": {"type": "WAME", "params": {"lr": 1e-3, "alpha": 0.9, "etas": [0.1, 1.2],
                                             "zeta_bounds": [0.01, 100.0]}}

After :func:`wame_dist.deepspeed.register`, DeepSpeed's engine builds WAME from that block itself
(:func:`wame_builder` checks it). :func:`engine_config` is the one place where a config is rewritten before
DeepSpeed sees it: a run's overrides (optimizer block, precision, batch size) with the checks that fail
early, and, for a WAME instance handed to DeepSpeed as a client optimizer, the config without an optimizer
block and with ``zero_force_ds_cpu_optimizer: false`` under optimizer offload (otherwise DeepSpeed insists on
its own CPU Adam): :func:`for_client_optimizer`.
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
from pathlib import Path
from typing import Any

from wame_dist.errors import BadInput
from wame_dist.optim import WAME
from wame_dist.optim.wame import EIGHT_BIT

#: The optimizer name of a WAME block ("type"), compared without case as DeepSpeed compares its own names.
WAME_TYPE = "wame"

#: Keys a WAME block's "params" may hold: WAME's constructor arguments.
WAME_PARAMS = tuple(name for name in inspect.signature(WAME).parameters if name != "params")


class ConfigError(BadInput):
    """A DeepSpeed config that cannot be used; the message says what to change."""


def read_config(config: str | Path | dict[str, Any]) -> dict[str, Any]:
    """Returns the config as a fresh dict, reading JSON files with errors that name the file and line."""
    if isinstance(config, dict):
        return copy.deepcopy(config)
    path = Path(config)
    if not path.is_file():
        raise ConfigError(f"DeepSpeed config {str(path)!r} does not exist; pass e.g. configs/zero2.json")
    try:
        loaded = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(
            f"DeepSpeed config {str(path)!r} is not valid JSON (line {error.lineno}, column {error.colno}: "
            f"{error.msg})"
        ) from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"DeepSpeed config {str(path)!r} must hold a JSON object")
    return loaded


def is_wame_name(name: Any) -> bool:
    """True for the optimizer name WAME, in any case."""
    return isinstance(name, str) and name.lower() == WAME_TYPE


def names_wame(config: dict[str, Any]) -> bool:
    """True when the config's optimizer block selects WAME."""
    block = config.get("optimizer")
    return isinstance(block, dict) and is_wame_name(block.get("type"))


def wame_arguments(params: dict[str, Any] | None) -> dict[str, Any]:
    """WAME's keyword arguments from a WAME block's ``params``, checked against WAME's signature."""
    params = dict(params or {})
    unknown = sorted(set(params) - set(WAME_PARAMS))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} in the WAME optimizer block; valid keys are {list(WAME_PARAMS)}"
        )
    for pair in ("etas", "zeta_bounds", "betas"):
        if params.get(pair) is not None:
            params[pair] = tuple(params[pair])
    return params


def require_shardable_state(state_dtype: str) -> None:
    """Refuses ``state_dtype="8bit"`` under ZeRO: its per-block scales and packed signs do not have their
    weight's shape, which ZeRO's partitions and checkpoint tools assume ("fp32" and "bf16" do)."""
    if state_dtype == EIGHT_BIT:
        raise ConfigError(
            "WAME(state_dtype='8bit') is not supported under ZeRO yet (its partitions and checkpoints cut "
            "every state like its weight; 8-bit theta has one scale per block and prev_sign four per "
            'byte); use state_dtype="bf16" (7 bytes per weight), or ZeRO stage 0'
        )


def wame_builder(params: dict[str, Any] | None) -> functools.partial:
    """``WAME`` with a WAME block's ``params`` bound, to be called with the parameters; unknown keys and bad
    values raise :class:`ConfigError` now."""
    arguments = wame_arguments(params)
    try:
        WAME([{"params": []}], **arguments)
    except ValueError as error:
        raise ConfigError(f"the WAME optimizer block of the DeepSpeed config: {error}") from None
    return functools.partial(WAME, **arguments)


def for_client_optimizer(config: dict[str, Any]) -> dict[str, Any]:
    """The config DeepSpeed should see when a WAME instance is passed as a client optimizer: no optimizer
    block, and ``zero_force_ds_cpu_optimizer: false`` under optimizer offload."""
    rewritten = {key: value for key, value in config.items() if key != "optimizer"}
    offload = rewritten.get("zero_optimization", {}).get("offload_optimizer", {}) or {}
    if str(offload.get("device", "none")).lower() != "none":
        rewritten["zero_force_ds_cpu_optimizer"] = False
    return rewritten


#: Optimizer types DeepSpeed builds as plain ``torch.optim`` classes that ZeRO has not tested: ZeRO refuses
#: them unless ``zero_allow_untested_optimizer`` is set.
UNTESTED_TYPES = ("rmsprop", "sgd")


def needs_untested_flag(block: dict[str, Any]) -> bool:
    """Whether ZeRO takes the "optimizer" block ``block`` only with ``zero_allow_untested_optimizer``."""
    return block.get("type", "").lower() in UNTESTED_TYPES


def engine_config(
    source: str | Path | dict[str, Any],
    world_size: int | None = None,
    *,
    optimizer: dict[str, Any] | None = None,
    optimizer_overrides: dict[str, Any] | None = None,
    precision: str | None = None,
    train_batch_size: int | None = None,
    fp16_check: bool = False,
    client_optimizer: bool = False,
) -> dict[str, Any]:
    """The config DeepSpeed sees: ``source`` (a JSON file or a dict, not modified) with these changes, in
    this order, each checked before anything starts.

    * ``client_optimizer``: the optimizer is passed to DeepSpeed as an instance, so the config loses its
      optimizer block (:func:`for_client_optimizer`); otherwise the config must end with one:
      ``optimizer`` replaces it, or else ``optimizer_overrides`` update its ``params``; a type ZeRO has
      not tested gets ``zero_allow_untested_optimizer`` (:func:`needs_untested_flag`);
    * ``precision`` ("fp32", "bf16", "fp16" or "bf16-autocast"): enables exactly that one of DeepSpeed's
      ``bf16``, ``fp16`` and ``torch_autocast`` blocks ("fp32": none), keeping their other settings;
    * ``fp16_check``: :func:`check_fp16` (for DeepSpeed's engine, not for FSDP2, which refuses fp16 itself);
    * ``train_batch_size``: the global batch, replacing the config's micro batch;
    * ``world_size``: :func:`check_batch` for that many ranks (None: left to DeepSpeed).
    """
    config = read_config(source)
    if client_optimizer:
        config = for_client_optimizer(config)
    else:
        _set_optimizer(config, source, optimizer, optimizer_overrides)
    if precision is not None:  # bf16/fp16: DeepSpeed's mixed precision (fp32 master weights in WAME);
        # bf16-autocast: fp32 weights, the forward pass under torch.autocast (DeepSpeed's "torch_autocast")
        config["bf16"] = {**config.get("bf16", {}), "enabled": precision == "bf16"}
        config["fp16"] = {**config.get("fp16", {}), "enabled": precision == "fp16"}
        config["torch_autocast"] = {"enabled": precision == "bf16-autocast", "dtype": "bfloat16"}
    if fp16_check:
        check_fp16(config, source)
    if train_batch_size is not None:
        config["train_batch_size"] = train_batch_size
        config.pop("train_micro_batch_size_per_gpu", None)
    if world_size is not None:
        check_batch(config, world_size, source)
    return config


def _set_optimizer(
    config: dict[str, Any],
    source: str | Path | dict[str, Any],
    optimizer: dict[str, Any] | None,
    overrides: dict[str, Any] | None,
) -> None:
    """Gives ``config`` its optimizer block: ``optimizer``, or its own with ``overrides`` in its params."""
    if optimizer is not None:
        config["optimizer"] = optimizer
    elif overrides:
        if "optimizer" not in config:
            raise ConfigError(
                "--lr and --optimizer-params need an optimizer: add --optimizer or an 'optimizer' block to "
                f"{source}"
            )
        config["optimizer"].setdefault("params", {}).update(overrides)
    if "optimizer" not in config:
        raise ConfigError(f"{source} has no 'optimizer' block; add one or pass --optimizer")
    if needs_untested_flag(config["optimizer"]):
        config["zero_allow_untested_optimizer"] = True


def check_fp16(config: dict[str, Any], source: str | Path | dict[str, Any]) -> None:
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


def check_batch(config: dict[str, Any], world_size: int, source: str | Path | dict[str, Any]) -> None:
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
    """The samples each rank takes per forward pass under a config :func:`check_batch` accepted."""
    accumulation = config.get("gradient_accumulation_steps", 1)
    return config.get("train_micro_batch_size_per_gpu") or config["train_batch_size"] // (
        accumulation * world_size
    )
