"""The WAME optimizer. Its functional form is ``wame_dist.optim.wame.wame``."""

from wame_dist.optim.wame import WAME

__all__ = ["WAME"]
