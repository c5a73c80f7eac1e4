"""DeepSpeed configs that name WAME: reading them, checking the WAME block, rewriting them for DeepSpeed.

A config selects WAME the way DeepSpeed configs select any optimizer::

    "optimizer": {"type": "WAME", "params": {"lr": 1e-3, "alpha": 0.9, "etas": [0.1, 1.2],
                                             "zeta_bounds": [0.01, 100.0]}}

After :func:`wame_dist.deepspeed.register`, DeepSpeed's engine builds WAME from that block itself
(:func:`wame_builder` checks it). A WAME instance handed to DeepSpeed as a client optimizer needs one switch
under optimizer offload, ``zero_force_ds_cpu_optimizer: false`` (otherwise DeepSpeed insists on its own CPU
Adam): :func:`for_client_optimizer`.
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
