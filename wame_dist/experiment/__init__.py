"""The paper's experimental protocol: studies of optimizers x seeds from shared initial weights."""

from wame_dist.experiment.runner import run_study
from wame_dist.experiment.study import StudyConfig, load_study

__all__ = ["StudyConfig", "load_study", "run_study"]
