"""WAME inside DeepSpeed: ``initialize`` reads ``"type": "WAME"`` configs; checkpoint tools."""

from wame_dist.deepspeed.config import ConfigError
from wame_dist.deepspeed.engine import initialize

__all__ = ["ConfigError", "initialize"]
