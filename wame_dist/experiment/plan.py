"""A study's plan: its runs, the ones its folder still misses, and the folder made ready for them.

The three executors carry the plan out the same way: local processes (:mod:`wame_dist.experiment.runner`,
``wame-dist study``), submitit jobs (:mod:`wame_dist.sweep.cli`, ``wame-dist sweep``) and one SLURM job
array (:mod:`wame_dist.sweep.array`, ``slurm/sweep.sh``). Each asks :func:`prepare` for the missing runs,
trains them (:func:`wame_dist.experiment.runs.run_config`) and files each finished run's record
(:func:`wame_dist.experiment.runs.record_result`); a run already filed is never run again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from wame_dist.experiment.records import StudyRecords
from wame_dist.experiment.runs import RunSpec, write_init_weights
from wame_dist.experiment.study import StudyConfig


def final_runs(study: StudyConfig, rates: Mapping[str, float] | None = None) -> list[RunSpec]:
    """The reported runs, seed-major (every optimizer of seed 0, then of seed 1, ...), at ``rates``
    (default: the study's documented ones). A sweep's array index is the position in this list."""
    rates = study.lr if rates is None else rates
    return [
        RunSpec(name, seed, rates[name], "final") for seed in study.final_seeds() for name in study.optimizers
    ]


def tuning_runs(study: StudyConfig) -> list[RunSpec]:
    """One run per rate of each optimizer's grid and tuning seed (the same budget for every optimizer)."""
    return [
        RunSpec(name, seed, lr, "tune")
        for name, rates in tuning_grid(study).items()
        for lr in rates
        for seed in study.tune_seeds()
    ]


def tuning_grid(study: StudyConfig) -> dict[str, list[float]]:
    """The rates to try, for the study's optimizers that have a grid."""
    return {name: rates for name, rates in study.tune.grid.items() if name in study.optimizers}


def missing(study: StudyConfig, specs: Sequence[RunSpec], out: Path) -> list[tuple[int, RunSpec]]:
    """The runs of ``specs`` that ``out`` has no record of, with their positions in ``specs``."""
    done = StudyRecords(out).finished()
    return [(i, spec) for i, spec in enumerate(specs) if spec.key(study) not in done]


def prepare(study: StudyConfig, specs: Sequence[RunSpec], out: Path) -> list[tuple[int, RunSpec]]:
    """The missing runs of ``specs`` (:func:`missing`), after writing the initial weights of each of their
    seeds (once: every optimizer of a seed starts from the same file)."""
    todo = missing(study, specs, out)
    for seed in sorted({spec.seed for _, spec in todo}):
        write_init_weights(study, out, seed)
    return todo
