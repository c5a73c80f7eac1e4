"""``wame-dist export``: the entry point :mod:`wame_dist.cli` runs (see :mod:`.cli`)."""

from wame_dist.deepspeed.checkpoint.cli import export_main as main

__all__ = ["main"]
