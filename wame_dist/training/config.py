"""What one training run is: a small dataclass per component, and the command line that fills them."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from typing import Any

from wame_dist.data import DATASETS
from wame_dist.deepspeed.checkpoint.safe_load import TRUST_FLAG
from wame_dist.models import MODELS
from wame_dist.training.optimizers import OPTIMIZERS

ENGINES = ("deepspeed", "fsdp2")
PRECISIONS = ("fp32", "bf16", "fp16", "bf16-autocast")

#: The network of each data set in the paper (Table 1a for MNIST, Table 1b for CIFAR).
DEFAULT_MODEL = {"digits": "table1a", "mnist": "table1a", "cifar10": "table1b", "cifar100": "table1b"}


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False


@dataclass(frozen=True)
class ModelConfig:
    name: str | None = None  # None: the paper's network for the data set
    width: float = 1.0


@dataclass(frozen=True)
class OptimizerConfig:
    name: str | None = None  # None: the DeepSpeed config's own "optimizer" block
    lr: float | None = None  # None: the optimizer's documented default (wame_dist.training.optimizers)
    params: dict[str, Any] | None = None  # more keyword arguments of the optimizer (its block's "params")
    lr_decay: float = 0.0  # Keras's decay, lr / (1 + lr_decay * steps), for any optimizer (training.lr_decay)


@dataclass(frozen=True)
class RunConfig:
    deepspeed_config: str
    engine: str = "deepspeed"  # fsdp2: PyTorch's fully_shard and DCP checkpoints (wame_dist.training.engines)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    precision: str | None = None  # None: as the DeepSpeed config says
    batch_size: int | None = None  # global batch; None: the config's train_batch_size
    epochs: int = 10
    seed: int = 0
    init_weights: str | None = None
    out_dir: str = "runs/latest"
    resume_from: str | None = None  # a checkpoint folder (e.g. resharded); default: out_dir's own
    checkpoint_every: int = 1  # epochs between checkpoints; 0: none
    keep_checkpoints: int = 2
    max_steps: int | None = None  # stop after this many optimizer steps (tests, smoke runs)
    compile: bool = False
    timeout_s: int = 600  # a collective waiting longer than this fails the job instead of hanging it
    trust_checkpoint: bool = False  # resume from checkpoints holding types DeepSpeed's never hold

    @property
    def model_name(self) -> str:
        return self.model.name or DEFAULT_MODEL[self.data.dataset]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Train a Table 1 network with WAME (or a baseline) under DeepSpeed or FSDP2.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--deepspeed_config", "--deepspeed-config", required=True, help="DeepSpeed JSON config")
    p.add_argument("--engine", choices=ENGINES, default="deepspeed", help="DeepSpeed, or PyTorch's FSDP2")
    p.add_argument("--dataset", choices=DATASETS, default="digits")
    p.add_argument("--data-dir", default=None, help="folder with the MNIST / CIFAR files (default ./data)")
    p.add_argument("--download", action="store_true", help="let torchvision download missing data")
    p.add_argument("--model", choices=MODELS, default=None, help="default: the paper's network for the data")
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier (1 = the paper's network)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=None, help="default: the config's optimizer")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument(
        "--optimizer-params",
        type=optimizer_params,
        default=None,
        help="more arguments of the optimizer as a JSON object, e.g. '{\"nesterov\": true}'",
    )
    p.add_argument(
        "--lr-decay",
        type=float,
        default=0.0,
        help="Keras's rate decay: lr / (1 + lr_decay * optimizer steps), for any optimizer",
    )
    p.add_argument("--precision", choices=PRECISIONS, default=None, help="default: as the config says")
    p.add_argument("--batch-size", type=int, default=None, help="global batch (default: train_batch_size)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init-weights", default=None, help="start from this file (wame-dist init-weights)")
    p.add_argument("--out-dir", default="runs/latest", help="metrics, result and checkpoints go here")
    p.add_argument("--resume-from", default=None, help="checkpoint folder to start from (default: out-dir's)")
    p.add_argument("--checkpoint-every", type=int, default=1, help="epochs between checkpoints (0: none)")
    p.add_argument("--keep-checkpoints", type=int, default=2)
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--timeout", type=int, default=600, help="seconds before a stuck collective fails the job")
    p.add_argument(
        TRUST_FLAG,
        action="store_true",
        help="resume from a checkpoint that holds types DeepSpeed's checkpoints do not (refused by default, "
        "since loading it can run code from it); only for files you trust",
    )
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return p


def optimizer_params(text: str) -> dict[str, Any]:
    """``--optimizer-params``: a JSON object (argparse reports the ValueError as a usage error)."""
    try:
        params = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"not valid JSON ({error.msg})") from None
    if not isinstance(params, dict):
        raise ValueError("not a JSON object")
    return params


def parse_args(argv: list[str] | None = None) -> RunConfig:
    args = parser().parse_args(argv)
    if not args.lr_decay >= 0.0:
        parser().error(f"--lr-decay must be >= 0, not {args.lr_decay}")
    return RunConfig(
        deepspeed_config=args.deepspeed_config,
        engine=args.engine,
        data=DataConfig(args.dataset, args.data_dir, args.download),
        model=ModelConfig(args.model, args.width),
        optimizer=OptimizerConfig(args.optimizer, args.lr, args.optimizer_params, args.lr_decay),
        precision=args.precision,
        batch_size=args.batch_size,
        epochs=args.epochs,
        seed=args.seed,
        init_weights=args.init_weights,
        out_dir=args.out_dir,
        resume_from=args.resume_from,
        checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints,
        max_steps=args.max_steps,
        compile=args.compile,
        timeout_s=args.timeout,
        trust_checkpoint=args.trust_checkpoint,
    )
