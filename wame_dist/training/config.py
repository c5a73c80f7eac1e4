"""What one training run is: a small validated dataclass per component, the single source of its defaults.

Each field carries its command-line flag and help (:func:`option`); :func:`parser` is generated from the
fields and :meth:`RunConfig.to_argv` writes a config back as the flags that reproduce it, so that argv
exists only at process boundaries (``torchrun``, ``srun``, ``sbatch``). Studies and sweeps build a
:class:`RunConfig` directly. ``__post_init__`` validates every component and raises
:class:`~wame_dist.errors.BadInput` saying which flag to change.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any

from wame_dist.data import DATASETS
from wame_dist.deepspeed.checkpoint.safe_load import TRUST_FLAG
from wame_dist.errors import BadInput
from wame_dist.models import MODELS
from wame_dist.training.optimizers import OPTIMIZERS

ENGINES = ("deepspeed", "fsdp2")
PRECISIONS = ("fp32", "bf16", "fp16", "bf16-autocast")

#: The network of each data set in the paper (Table 1a for MNIST, Table 1b for CIFAR).
DEFAULT_MODEL = {"digits": "table1a", "mnist": "table1a", "cifar10": "table1b", "cifar100": "table1b"}


def option(
    flag: str, help: str, *, default: Any = MISSING, choices: tuple | None = None, **extra: Any
) -> Any:
    """A dataclass field that is also the command-line option ``flag`` (``extra``: ``aliases``, ``parse``
    and ``show`` for values that are not plain strings or numbers)."""
    return field(default=default, metadata={"flag": flag, "help": help, "choices": choices, **extra})


def json_object(text: str) -> dict[str, Any]:
    """``--optimizer-params``: a JSON object (argparse reports the ValueError as a usage error)."""
    try:
        params = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"not valid JSON ({error.msg})") from None
    if not isinstance(params, dict):
        raise ValueError("not a JSON object")
    return params


def _positive(value: float | None, flag: str, *, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if value is None or not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise BadInput(f"{flag} must be a positive number, not {value!r}")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = option("--dataset", "data set", default="digits", choices=DATASETS)
    data_dir: str | None = option(
        "--data-dir", "folder with the MNIST / CIFAR files (default ./data)", default=None
    )
    download: bool = option("--download", "let torchvision download missing data", default=False)

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise BadInput(f"unknown data set {self.dataset!r} (--dataset): use one of {', '.join(DATASETS)}")


@dataclass(frozen=True)
class ModelConfig:
    name: str | None = option(
        "--model", "network (default: the paper's for the data set)", default=None, choices=MODELS
    )
    width: float = option("--width", "channel multiplier (1 = the paper's network)", default=1.0)

    def __post_init__(self) -> None:
        if self.name is not None and self.name not in MODELS:
            raise BadInput(f"unknown model {self.name!r} (--model): use one of {', '.join(MODELS)}")
        _positive(self.width, "--width", allow_none=False)


@dataclass(frozen=True)
class OptimizerConfig:
    name: str | None = option(
        "--optimizer",
        "update rule (default: the DeepSpeed config's own block)",
        default=None,
        choices=OPTIMIZERS,
    )
    lr: float | None = option("--lr", "learning rate (default: the rule's documented one)", default=None)
    params: dict[str, Any] | None = option(  # noqa: RUF009 (option() is a dataclasses.field)
        "--optimizer-params",
        "more arguments of the optimizer as a JSON object, e.g. '{\"nesterov\": true}'",
        default=None,
        parse=json_object,
        show=json.dumps,
    )
    lr_decay: float = option(
        "--lr-decay", "Keras's rate decay: lr / (1 + lr_decay * optimizer steps), for any rule", default=0.0
    )

    def __post_init__(self) -> None:
        if self.name is not None and self.name not in OPTIMIZERS:
            choices = ", ".join(OPTIMIZERS)
            raise BadInput(f"unknown optimizer {self.name!r} (--optimizer): use one of {choices}")
        _positive(self.lr, "--lr")
        if not (isinstance(self.lr_decay, int | float) and self.lr_decay >= 0.0):
            raise BadInput(f"--lr-decay must be >= 0, not {self.lr_decay!r}")


@dataclass(frozen=True)
class RunConfig:
    deepspeed_config: str = option(
        "--deepspeed_config", "DeepSpeed JSON config", aliases=("--deepspeed-config",), required=True
    )
    engine: str = option(
        "--engine", "DeepSpeed, or PyTorch's FSDP2 (DCP checkpoints)", default="deepspeed", choices=ENGINES
    )
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    precision: str | None = option(
        "--precision", "default: as the DeepSpeed config says", default=None, choices=PRECISIONS
    )
    batch_size: int | None = option("--batch-size", "global batch (default: train_batch_size)", default=None)
    epochs: int = option("--epochs", "epochs to train", default=10)
    seed: int = option("--seed", "initial weights, data order and dropout", default=0)
    init_weights: str | None = option(
        "--init-weights", "start from this file (wame-dist init-weights)", default=None
    )
    out_dir: str = option("--out-dir", "metrics, result and checkpoints go here", default="runs/latest")
    resume_from: str | None = option(
        "--resume-from", "checkpoint folder to start from (default: out-dir's own)", default=None
    )
    checkpoint_every: int = option("--checkpoint-every", "epochs between checkpoints (0: none)", default=1)
    keep_checkpoints: int = option("--keep-checkpoints", "complete checkpoints kept", default=2)
    max_steps: int | None = option("--max-steps", "stop after this many optimizer steps", default=None)
    compile: bool = option("--compile", "torch.compile the model", default=False)
    timeout_s: int = option(
        "--timeout", "seconds before a stuck collective fails the job instead of hanging it", default=600
    )
    trust_checkpoint: bool = option(
        TRUST_FLAG,
        "resume from a checkpoint that holds types DeepSpeed's checkpoints do not (refused by default, since "
        "loading it can run code from it); only for files you trust",
        default=False,
    )

    def __post_init__(self) -> None:
        for name, value in (("--batch-size", self.batch_size), ("--max-steps", self.max_steps)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise BadInput(f"{name} must be a whole number of at least 1, not {value!r}")
        for name, value, least in (
            ("--epochs", self.epochs, 1),
            ("--checkpoint-every", self.checkpoint_every, 0),
            ("--keep-checkpoints", self.keep_checkpoints, 1),
            ("--timeout", self.timeout_s, 1),
        ):
            if not isinstance(value, int) or value < least:
                raise BadInput(f"{name} must be a whole number of at least {least}, not {value!r}")

    @property
    def model_name(self) -> str:
        return self.model.name or DEFAULT_MODEL[self.data.dataset]

    def to_argv(self) -> list[str]:
        """The options that :func:`parse_args` turns back into this config (defaults left out)."""
        argv: list[str] = []
        for f, value in _options(self):
            if value == f.default:
                continue
            if f.type in ("bool", bool):
                argv.append(f.metadata["flag"])
            else:
                argv += [f.metadata["flag"], f.metadata.get("show", str)(value)]
        return argv


def _options(config: Any) -> list[tuple[Any, Any]]:
    """``(field, value)`` of every option of ``config`` and its components, in declaration order."""
    found = []
    for f in fields(config):
        value = getattr(config, f.name)
        found += _options(value) if is_dataclass(value) else [(f, value)]
    return found


def _add_options(p: argparse.ArgumentParser, cls: type, prefix: str = "") -> None:
    for f in fields(cls):
        if "flag" not in f.metadata:
            _add_options(p, f.default_factory, f"{prefix}{f.name}.")  # a component
            continue
        meta = f.metadata
        flags = [meta["flag"], *meta.get("aliases", ())]
        kwargs: dict[str, Any] = {"dest": prefix + f.name, "help": meta["help"]}
        if f.type in ("bool", bool):
            kwargs["action"] = "store_true"
        else:
            kwargs["type"] = meta.get("parse") or _scalar_type(f.type)
        if meta.get("required"):
            kwargs["required"] = True
        else:
            kwargs["default"] = f.default
        if meta["choices"]:
            kwargs["choices"] = meta["choices"]
        p.add_argument(*flags, **kwargs)


def _scalar_type(annotation: Any) -> type:
    text = str(annotation)
    return int if text.startswith("int") else float if text.startswith("float") else str


def parser() -> argparse.ArgumentParser:
    """The training command line, generated from :class:`RunConfig`'s fields."""
    p = argparse.ArgumentParser(
        prog="python -m wame_dist.training",
        description="Train a Table 1 network with WAME (or a baseline) under DeepSpeed or FSDP2.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_options(p, RunConfig)
    p.add_argument(
        "--check",
        action="store_true",
        help="check the settings, the DeepSpeed config, the data and the initial-weights file, then exit "
        "(what a batch job does before it starts any rank)",
    )
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return p


def parse_command(argv: list[str] | None = None) -> tuple[RunConfig, bool]:
    """The :class:`RunConfig` of a command line and whether it asks for ``--check`` only; an invalid one
    ends with argparse's usage error (exit 2)."""
    p = parser()
    values = vars(p.parse_args(argv))
    values.pop("local_rank")
    check_only = values.pop("check")
    try:
        return _build(RunConfig, values), check_only
    except BadInput as error:
        p.error(str(error))


def parse_args(argv: list[str] | None = None) -> RunConfig:
    """The :class:`RunConfig` of a command line (:func:`parse_command` without ``--check``)."""
    return parse_command(argv)[0]


def _build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    kwargs = {}
    for f in fields(cls):
        if "flag" in f.metadata:
            kwargs[f.name] = values[prefix + f.name]
        else:
            kwargs[f.name] = _build(f.default_factory, values, f"{prefix}{f.name}.")
    return cls(**kwargs)
