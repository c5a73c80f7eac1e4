"""WAME inside DeepSpeed: :func:`register` (DeepSpeed's own ``initialize`` then builds ``"type": "WAME"``),
``initialize``, :func:`require_wame` (the check that an engine steps WAME); checkpoint tools."""

from wame_dist.deepspeed.config import ConfigError
from wame_dist.deepspeed.engine import initialize
from wame_dist.deepspeed.registration import register, require_registered, require_wame

__all__ = ["ConfigError", "initialize", "register", "require_registered", "require_wame"]
