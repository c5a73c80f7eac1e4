"""The networks of the paper's Table 1."""

from wame_dist.models.build import MODELS, build_model, count_parameters

__all__ = ["MODELS", "build_model", "count_parameters"]
