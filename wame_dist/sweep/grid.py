"""A sweep's grid and folder: the study's final runs (seeds x optimizers) in a fixed order.

Grid index ``i`` is seed ``i // len(optimizers)`` with optimizer ``optimizers[i % len(optimizers)]``, at
the study's documented rate. A sweep folder has the layout of ``wame-dist study``'s (``init/``, ``runs/``,
``results.jsonl``, ``report/``; a finished run is recorded by
:func:`wame_dist.experiment.runs.record_result`) plus ``study.json``: the study as swept (overrides
applied, paths made absolute), so that its jobs, and any later re-run, see exactly the same grid.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

from wame_dist import atomic
from wame_dist.data import DEFAULT_DATA_DIR
from wame_dist.errors import BadInput
from wame_dist.experiment.results_file import ResultsFile
from wame_dist.experiment.runner import final_runs
from wame_dist.experiment.runs import RunSpec, write_init_weights
from wame_dist.experiment.study import StudyConfig, make_study

STUDY_FILE = "study.json"
RESULTS_FILE = "results.jsonl"


def absolute(study: StudyConfig) -> StudyConfig:
    """The study with its DeepSpeed config and data folder (relative ones: to the current folder) as
    absolute paths, for jobs that may start elsewhere; fails if either is missing."""
    config = Path(study.deepspeed_config).resolve()
    if not config.is_file():
        raise BadInput(f"DeepSpeed config {config} does not exist; set the study's deepspeed_config")
    if study.dataset == "digits":  # bundled with scikit-learn
        return replace(study, deepspeed_config=str(config), data_dir=None)
    data_dir = Path(study.data_dir or DEFAULT_DATA_DIR).resolve()
    if not data_dir.is_dir():
        raise BadInput(f"data folder {data_dir} of {study.dataset} does not exist; set the study's data_dir")
    return replace(study, deepspeed_config=str(config), data_dir=str(data_dir))


def prepare(study: StudyConfig, out: Path) -> tuple[StudyConfig, list[tuple[int, RunSpec]]]:
    """Sets the sweep folder up for ``study``; returns the study as swept (what its jobs load with
    :func:`load_swept`) and the runs still missing from its results file, with their grid indices. Writes
    ``study.json`` (or checks that it holds this very study) and the initial weights of every seed with a
    missing run, before any job starts."""
    study = absolute(study)
    out.mkdir(parents=True, exist_ok=True)
    saved = out / STUDY_FILE
    if saved.exists() and load_swept(out) != study:
        raise BadInput(f"{out} holds a sweep of another study ({saved}); use another sweep folder")
    atomic.write_text(saved, json.dumps(asdict(study), indent=1) + "\n")
    missing = pending(study, out)
    for seed in sorted({spec.seed for _, spec in missing}):
        write_init_weights(study, out, seed)
    return study, missing


def load_swept(out: Path) -> StudyConfig:
    """The study of the sweep folder ``out`` (as :func:`prepare` wrote it)."""
    path = out / STUDY_FILE
    if not path.is_file():
        raise BadInput(f"{out} is not a sweep folder (no {STUDY_FILE}); start the sweep first")
    return make_study(json.loads(path.read_text()), source=str(path))


def pending(study: StudyConfig, out: Path) -> list[tuple[int, RunSpec]]:
    """The grid's runs that are not in the results file, with their indices."""
    done = ResultsFile(out / RESULTS_FILE).finished()
    return [(i, spec) for i, spec in enumerate(final_runs(study)) if spec.key(study) not in done]
