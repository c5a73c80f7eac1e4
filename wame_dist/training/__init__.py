"""One training run: its config (dataclasses and command line) and the loop that carries it out."""

from wame_dist.training.config import RunConfig, parse_args
from wame_dist.training.loop import train

__all__ = ["RunConfig", "parse_args", "train"]
