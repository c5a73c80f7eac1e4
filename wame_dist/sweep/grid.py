"""A sweep's folder: the study's final runs (seeds x optimizers, :func:`wame_dist.experiment.plan.final_runs`)
pinned for jobs that start later, elsewhere.

Grid index ``i`` is seed ``i // len(optimizers)`` with optimizer ``optimizers[i % len(optimizers)]``, at
the study's documented rate. A sweep folder has the layout of ``wame-dist study``'s (``init/``, ``runs/``,
``records/``, ``results.jsonl``, ``report/``) plus ``study.json``: the study as swept (overrides applied,
paths made absolute), so that its jobs, and any later re-run, see exactly the same grid.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

from wame_dist import atomic
from wame_dist.data import DEFAULT_DATA_DIR
from wame_dist.errors import BadInput
from wame_dist.experiment import plan
from wame_dist.experiment.runs import RunSpec
from wame_dist.experiment.study import StudyConfig, make_study

STUDY_FILE = "study.json"


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
    :func:`load_swept`) and the runs still missing (:func:`wame_dist.experiment.plan.prepare`: their seeds'
    initial weights written, before any job starts), with their grid indices. Writes ``study.json`` (or
    checks that it holds this very study)."""
    study = absolute(study)
    out.mkdir(parents=True, exist_ok=True)
    saved = out / STUDY_FILE
    if saved.exists() and load_swept(out) != study:
        raise BadInput(f"{out} holds a sweep of another study ({saved}); use another sweep folder")
    atomic.write_text(saved, json.dumps(asdict(study), indent=1) + "\n")
    return study, plan.prepare(study, plan.final_runs(study), out)


def load_swept(out: Path) -> StudyConfig:
    """The study of the sweep folder ``out`` (as :func:`prepare` wrote it)."""
    path = out / STUDY_FILE
    if not path.is_file():
        raise BadInput(f"{out} is not a sweep folder (no {STUDY_FILE}); start the sweep first")
    return make_study(json.loads(path.read_text()), source=str(path))
