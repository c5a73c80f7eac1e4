"""wame_dist: the WAME optimizer (Mosca & Magoulas, ESANN 2017), fused, sharded and launched at scale."""

from wame_dist.optim import WAME

__all__ = ["WAME"]
__version__ = "0.1.0"
