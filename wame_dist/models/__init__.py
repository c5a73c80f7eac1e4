"""The networks of the paper's Table 1."""

from wame_dist.models.build import MODELS, build_model, count_parameters
from wame_dist.models.dropout import SampleDropout, set_samples

__all__ = ["MODELS", "SampleDropout", "build_model", "count_parameters", "set_samples"]
