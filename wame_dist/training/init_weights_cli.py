"""``wame-dist init-weights``: write the initial weights of one seed, for every optimizer to start from."""

from __future__ import annotations

import argparse

from wame_dist.data import DATASETS
from wame_dist.models import MODELS
from wame_dist.training.config import DEFAULT_MODEL
from wame_dist.training.init_weights import initial_network, network_settings, save_init_weights


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="wame-dist init-weights",
        description="Draw the initial weights of --seed for a network and write them (with their SHA-256, "
        "printed last) for launch/train.py --init-weights.",
    )
    parser.add_argument("--dataset", choices=DATASETS, default="digits")
    parser.add_argument(
        "--model", choices=MODELS, default=None, help="default: the paper's network for the data"
    )
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--out", required=True, help="file to write (atomically)")
    args = parser.parse_args(argv)
    settings = network_settings(args.dataset, args.model or DEFAULT_MODEL[args.dataset], args.width)
    digest = save_init_weights(
        args.out, initial_network(settings, args.seed), {**settings, "seed": args.seed}
    )
    print(
        f"{args.out}: {settings['model']} x{args.width} for {args.dataset}, seed {args.seed}, sha256 {digest}"
    )
    return 0
