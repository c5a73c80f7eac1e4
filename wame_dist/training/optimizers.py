"""The update rules a run can train with: one registry (:data:`RULES`) with each rule's display name,
documented default rate and DeepSpeed optimizer block, and the same blocks built as torch optimizers (for
FSDP2).

SGD with momentum and RMSprop are torch's (DeepSpeed builds any ``torch.optim`` class named by "type"),
Adam is DeepSpeed's own (its fused CPU/GPU kernels, DeepSpeedCPUAdam under offload) in plain Adam mode
(DeepSpeed's default is AdamW), the WAME rules are wame_dist's: Algorithm 1 of the paper, and the authors'
published Keras code with the previous weight's sign (as published) or the previous gradient's, and
Algorithm 1 with its state in bfloat16 or 8 bits (issue 14's accuracy study).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from wame_dist.errors import BadInput
from wame_dist.optim import WAME


@dataclass(frozen=True)
class Rule:
    """One update rule: ``type`` and fixed ``params`` of its DeepSpeed block, and its default rate (the
    customary one of its family; the paper gives none, and a study's ``tune`` step chooses on validation)."""

    display: str
    type: str
    default_lr: float
    params: dict[str, Any] = field(default_factory=dict)


#: Every rule, in the order tables list them.
RULES = {
    "sgd": Rule("SGD", "SGD", 1e-2, {"momentum": 0.9}),
    "rmsprop": Rule("RMSprop", "RMSprop", 1e-3, {"alpha": 0.9}),  # the decay of the paper (and Hinton's)
    "adam": Rule("Adam", "Adam", 1e-3, {"adam_w_mode": False}),
    "wame": Rule("WAME", "WAME", 1e-3),
    "wame_keras": Rule("WAME (Keras code)", "WAME", 1e-3, {"variant": "keras"}),
    "wame_keras_grad": Rule(
        "WAME (Keras, gradient sign)", "WAME", 1e-3, {"variant": "keras", "sign_source": "gradient"}
    ),
    "wame_bf16": Rule("WAME (bf16 state)", "WAME", 1e-3, {"state_dtype": "bf16"}),
    "wame_8bit": Rule("WAME (8-bit state)", "WAME", 1e-3, {"state_dtype": "8bit"}),
}
OPTIMIZERS = tuple(RULES)
DEFAULT_LR = {name: rule.default_lr for name, rule in RULES.items()}


def optimizer_block(
    name: str, lr: float | None = None, params: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The DeepSpeed config "optimizer" block of rule ``name`` at rate ``lr``, with ``params`` (extra
    keyword arguments of its optimizer, e.g. ``{"nesterov": True}``) over the rule's own."""
    if name not in RULES:
        raise BadInput(f"unknown optimizer {name!r}; expected one of {list(RULES)}")
    rule = RULES[name]
    lr = rule.default_lr if lr is None else lr
    return {"type": rule.type, "params": {"lr": lr, **rule.params, **(params or {})}}


def rule_name(block: dict[str, Any]) -> str:
    """The rule an "optimizer" block trains with: the registered rule of its type whose fixed params the
    block holds (the most specific one: a WAME block with ``"variant": "keras"`` is ``wame_keras``), else
    the block's type in lower case (e.g. a config's own ``AdamW`` block)."""
    kind, params = block.get("type", "").lower(), block.get("params", {})
    matches = [
        (len(rule.params), name)
        for name, rule in RULES.items()
        if rule.type.lower() == kind and all(params.get(k) == v for k, v in rule.params.items())
    ]
    return max(matches)[1] if matches else kind


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
        f"{'|'.join(RULES)} or --engine deepspeed"
    )
