"""Data sets of the paper's experiments, held in memory as tensors, and on-device mini-batching."""

from wame_dist.data.batches import DeviceBatches
from wame_dist.data.load import DATASETS, DEFAULT_DATA_DIR, load_splits
from wame_dist.data.shapes import SHAPES
from wame_dist.data.splits import Splits

__all__ = ["DATASETS", "DEFAULT_DATA_DIR", "SHAPES", "DeviceBatches", "Splits", "load_splits"]
