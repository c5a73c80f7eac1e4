"""WAME as an optimizer of DeepSpeed itself: :func:`register`, and :func:`require_wame`, the check that the
optimizer a DeepSpeed engine steps is WAME.

This is the one module that patches DeepSpeed (0.19; its private names come from :mod:`._deepspeed_compat`).
:func:`register` changes, once per process, three methods of ``deepspeed.runtime.engine.DeepSpeedEngine``
and one list:

* ``_is_supported_optimizer`` (the engine's sanity check) also accepts the name WAME, in any case;
* ``_configure_basic_optimizer`` builds WAME from a WAME block (checked by
  :func:`wame_dist.deepspeed.config.wame_builder`); every other name goes to DeepSpeed's own code;
* ``_configure_optimizer`` refuses 8-bit WAME state under ZeRO
  (:func:`wame_dist.deepspeed.config.require_shardable_state`), places ZeRO's flat partitions in their
  groups (``WAME.place``: the stochastic rounding of compact state is then the same on any number of
  ranks) and calls
  ``WAME.init_state()`` once ZeRO has cut WAME's parameter groups into its fragments, so that the state
  of every fragment exists when ZeRO-1/2 link it (after the first step of the first group), whichever
  way WAME was built (config block, client instance, client callable);
* ``deepspeed.runtime.zero.utils.ZERO_SUPPORTED_OPTIMIZERS`` lists WAME (tested with ZeRO 1-3 and offload
  by this project), so ZeRO takes it without ``zero_allow_untested_optimizer``.

Everything reaches DeepSpeed through its unchanged ``deepspeed.initialize``, so HF Trainer, Accelerate and
Lightning, which call it themselves, accept ``"optimizer": {"type": "WAME", ...}`` in their DeepSpeed config.
"""

from __future__ import annotations

from typing import Any

from wame_dist.deepspeed._deepspeed_compat import ZERO_SUPPORTED_OPTIMIZERS, partition_places
from wame_dist.deepspeed._deepspeed_compat import DeepSpeedEngine as _Engine
from wame_dist.deepspeed.config import is_wame_name, names_wame, require_shardable_state, wame_builder
from wame_dist.errors import BadInput
from wame_dist.optim import WAME

#: How to get WAME stepped: the end of the error :func:`require_wame` raises.
FIX = (
    'name WAME in the DeepSpeed config, \'"optimizer": {"type": "WAME", "params": {...}}\', and call '
    "wame_dist.deepspeed.register() before the engine is built (HF Trainer: instead of "
    "optimizers=(WAME(...), None), which transformers drops under DeepSpeed; Accelerate: with "
    "accelerate.utils.DummyOptim); a WAME "
    "instance passed as a client optimizer (HF optimizer_cls_and_kwargs, Lightning configure_optimizers) "
    "under ZeRO optimizer offload needs '\"zero_force_ds_cpu_optimizer\": false' in the config, or "
    "Accelerate replaces it by DeepSpeedCPUAdam and DeepSpeed refuses it"
)


def register() -> None:
    """Makes DeepSpeed's own engine build WAME from ``"optimizer": {"type": "WAME", "params": {...}}`` and
    link WAME's state for every ZeRO fragment (see the module's docstring). Idempotent; configs naming
    other optimizers behave exactly as before."""
    if is_registered():
        return
    is_supported, configure_basic, configure = (
        _Engine._is_supported_optimizer,
        _Engine._configure_basic_optimizer,
        _Engine._configure_optimizer,
    )

    def _is_supported_optimizer(self, optimizer_name):
        return is_wame_name(optimizer_name) or is_supported(self, optimizer_name)

    def _configure_basic_optimizer(self, model_parameters):
        if is_wame_name(self.optimizer_name()):
            return wame_builder(self.optimizer_params())(model_parameters)
        return configure_basic(self, model_parameters)

    def _configure_optimizer(self, client_optimizer, model_parameters):
        configure(self, client_optimizer, model_parameters)
        if isinstance(self.basic_optimizer, WAME):
            if self.zero_optimization_stage() > 0:
                for group in self.basic_optimizer.param_groups:
                    require_shardable_state(group["state_dtype"])
            self.basic_optimizer.place(partition_places(self.optimizer))
            self.basic_optimizer.init_state()

    for patched in (_is_supported_optimizer, _configure_basic_optimizer, _configure_optimizer):
        patched.__wame_dist__ = True
        setattr(_Engine, patched.__name__, patched)
    ZERO_SUPPORTED_OPTIMIZERS.append(WAME)


def is_registered() -> bool:
    """True once :func:`register` has run in this process."""
    return getattr(_Engine._configure_basic_optimizer, "__wame_dist__", False)


def require_wame(stepper: Any) -> WAME:
    """The WAME instance that a DeepSpeed engine (or any optimizer wrapper around its optimizer: Accelerate's,
    Lightning's, ZeRO's) steps, found by following ``.optimizer``; raises :class:`BadInput` with the fix
    when the chain ends in another optimizer."""
    chain, current = [], stepper
    while not isinstance(current, WAME):
        chain.append(type(current).__name__)
        current = getattr(current, "optimizer", None)
        if current is None:
            raise BadInput(f"DeepSpeed steps {' -> '.join(chain)}, not WAME; to train with WAME, {FIX}")
    return current


def require_registered(config: dict[str, Any] | None) -> None:
    """Raises :class:`BadInput` when ``config`` (a DeepSpeed config) names WAME but :func:`register` has not
    run, which DeepSpeed would answer with ``AssertionError: WAME is not a supported DeepSpeed Optimizer``."""
    if names_wame(config or {}) and not is_registered():
        raise BadInput(
            "the DeepSpeed config names WAME, which DeepSpeed knows only after "
            "wame_dist.deepspeed.register(); call it before the engine is built"
        )
