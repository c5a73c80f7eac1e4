"""A study: the paper's protocol for one data set (network, optimizers, seeds, epochs, learning rates).

Written as JSON (``configs/studies/*.json``); every key is a field of :class:`StudyConfig`::

    {"dataset": "cifar10", "model": "table1b", "width": 1.0, "seeds": 20, "epochs": 100, "batch_size": 128,
     "optimizers": ["sgd", "rmsprop", "adam", "wame"], "lr": {"wame": 0.001, ...},
     "lr_decay": {"sgd": 1e-5, ...}, "optimizer_params": {"sgd": {"nesterov": true}},
     "tune": {"grid": {"wame": [0.0003, 0.001, 0.003], ...}, "seeds": 2, "epochs": 20,
              "same_as": {"wame_bf16": "wame"}}}

``optimizers`` name rules of :data:`wame_dist.training.optimizers.RULES`; ``lr_decay`` (Keras's rate decay)
and ``optimizer_params`` (more arguments of a rule's optimizer) apply to the rules they name. ``tune.same_as``
gives a rule the rate tuned for another (variants of one rule compared at the same rate, e.g. WAME's state
types, so that their differences are the variant's alone).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from wame_dist.data import DATASETS
from wame_dist.errors import BadInput
from wame_dist.training.config import DEFAULT_MODEL
from wame_dist.training.optimizers import DEFAULT_LR, OPTIMIZERS

#: Tuning runs use their own seeds (10000, 10001, ...), so that no final run's weights choose its rate.
TUNE_SEED_BASE = 10_000


@dataclass(frozen=True)
class TuneConfig:
    grid: dict[str, list[float]] = field(default_factory=dict)  # optimizer -> rates; empty: no tuning
    seeds: int = 1
    epochs: int = 10
    same_as: dict[str, str] = field(default_factory=dict)  # optimizer -> the one whose tuned rate it takes


@dataclass(frozen=True)
class StudyConfig:
    dataset: str = "digits"
    model: str | None = None  # None: the paper's network for the data set
    width: float = 1.0
    optimizers: tuple[str, ...] = ("sgd", "rmsprop", "adam", "wame")  # the paper's four
    seeds: int = 20
    epochs: int = 100
    batch_size: int = 128
    lr: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_LR))
    lr_decay: dict[str, float] = field(default_factory=dict)  # optimizer -> Keras decay (training.lr_decay)
    optimizer_params: dict[str, dict[str, Any]] = field(default_factory=dict)  # optimizer -> more arguments
    tune: TuneConfig = field(default_factory=TuneConfig)
    deepspeed_config: str = "configs/zero2.json"
    data_dir: str | None = None
    ranks_per_run: int = 1  # processes (GPUs) of one run
    threads_per_run: int = 1  # torch threads of each process (CPU runs)

    @property
    def network(self) -> str:
        return self.model or DEFAULT_MODEL[self.dataset]

    def final_seeds(self) -> range:
        return range(self.seeds)

    def tune_seeds(self) -> range:
        return range(TUNE_SEED_BASE, TUNE_SEED_BASE + self.tune.seeds)


def load_study(path: str | Path, **overrides: Any) -> StudyConfig:
    """Reads a study file; ``overrides`` (e.g. ``seeds=2``) replace its values. Unknown keys are refused."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"study file {str(path)!r} does not exist (see configs/studies/)")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise BadInput(f"study file {str(path)!r} is not valid JSON ({error})") from None
    return make_study({**raw, **{k: v for k, v in overrides.items() if v is not None}}, source=str(path))


def make_study(raw: dict[str, Any], source: str = "study") -> StudyConfig:
    valid = {f.name for f in fields(StudyConfig)}
    unknown = sorted(set(raw) - valid)
    if unknown:
        raise BadInput(f"{source}: unknown key(s) {unknown}; valid keys are {sorted(valid)}")
    tune = raw.get("tune", {})
    tune_unknown = sorted(set(tune) - {f.name for f in fields(TuneConfig)})
    if tune_unknown:
        valid = ", ".join(f.name for f in fields(TuneConfig))
        raise BadInput(f"{source}: unknown key(s) {tune_unknown} in 'tune'; valid: {valid}")
    study = replace(
        StudyConfig(),
        **{k: v for k, v in raw.items() if k != "tune"},
        tune=TuneConfig(**tune),
    )
    study = replace(study, optimizers=tuple(study.optimizers), lr={**DEFAULT_LR, **study.lr})
    check(study, source)
    return study


def check(study: StudyConfig, source: str) -> None:
    if study.dataset not in DATASETS:
        raise BadInput(f"{source}: unknown dataset {study.dataset!r}; expected one of {DATASETS}")
    same_as = study.tune.same_as
    named = (
        study.optimizers,
        study.tune.grid,
        study.lr_decay,
        study.optimizer_params,
        same_as,
        same_as.values(),
    )
    bad = sorted({name for names in named for name in names} - set(OPTIMIZERS))
    if bad:
        raise BadInput(f"{source}: unknown optimizer(s) {bad}; expected some of {list(OPTIMIZERS)}")
    for name, source_rule in same_as.items():
        if source_rule not in study.tune.grid or name in study.tune.grid:
            raise BadInput(
                f"{source}: tune.same_as gives {name} the rate tuned for {source_rule}: {source_rule} needs "
                f"a grid and {name} none"
            )
    for name, decay in study.lr_decay.items():
        if not isinstance(decay, (int, float)) or not decay >= 0:
            raise BadInput(f"{source}: lr_decay of {name} must be a number >= 0, not {decay!r}")
    for name, params in study.optimizer_params.items():
        if not isinstance(params, dict):
            raise BadInput(f"{source}: optimizer_params of {name} must be an object, not {params!r}")
    for name, value in (("seeds", study.seeds), ("epochs", study.epochs), ("batch_size", study.batch_size)):
        if not isinstance(value, int) or value < 1:
            raise BadInput(f"{source}: {name} must be a positive integer, not {value!r}")
