"""``wame-dist reshard``: the entry point :mod:`wame_dist.cli` runs (see :mod:`.cli`)."""

from wame_dist.deepspeed.checkpoint.cli import reshard_main as main

__all__ = ["main"]
