"""The run record: the one format a finished run is written in, where records are kept, and reading them.

A record is a JSON object:

* ``key``: what identifies a run, :data:`KEY_FIELDS` (dataset, model, optimizer, seed, lr);
* ``init_hash``, ``epochs`` (per epoch: ``epoch``, ``train_loss``, ``val_acc``, ``test_acc``, ``wall_s``),
  ``best_epoch``, ``test_acc_at_best``, ``time_to_best_s``;
* ``settings``: the run's config (a study adds ``role``: ``tune`` or ``final``);
* ``environment``: what produced it (code, software, machine, job shape; ``signature`` sums it up).

Where records are kept:

* a run's folder: :data:`RESULT_FILE`, written by the run's rank 0;
* a study's (or sweep's) folder: :data:`RECORDS_DIR` ``/<run name>.json``, one file per finished run, each
  written atomically by the one process that finished that run. No two writers share a file, so nothing
  depends on a lock (which shared cluster file systems do not always honour across nodes);
* :data:`RESULTS_FILE` in a study's folder: JSON Lines, the union of its records, written when the study
  (or sweep) reports, for people and tools that want one file. The records folder is the truth.

This module reads records (:func:`read_records`); writers build them (``wame_dist.training.results``) and
file them (``wame_dist.experiment.records``), importing the names from here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

KEY_FIELDS = ("dataset", "model", "optimizer", "seed", "lr")
RESULT_FILE = "result.json"
RECORDS_DIR = "records"
RESULTS_FILE = "results.jsonl"

Key = tuple[str, str, str, int, float]


def key_of(record: Mapping[str, Any]) -> Key:
    """A record's key as a comparable tuple (seed as int, lr as float)."""
    k = record["key"]
    return k["dataset"], k["model"], k["optimizer"], int(k["seed"]), float(k["lr"])


def run_name(key: Mapping[str, Any]) -> str:
    """A run's name from its key, e.g. ``digits-table1a-wame-seed3-lr0.001``: the name of its folder in a
    study and, plus ``.json``, of its record under :data:`RECORDS_DIR`."""
    return f"{key['dataset']}-{key['model']}-{key['optimizer']}-seed{key['seed']}-lr{float(key['lr']):g}"


def read_records(path: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """The records at ``path`` with where each came from (``FILE`` or ``FILE:LINE``), in a stable order.

    ``path`` is a study's folder (the files of its :data:`RECORDS_DIR`, by name) or a results file (JSON
    Lines, in file order; blank lines skipped). Raises ``FileNotFoundError`` when there is
    nothing of the kind at ``path`` and ``ValueError`` (naming the file and line) for text that is not JSON.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / RECORDS_DIR).is_dir():
            raise FileNotFoundError(f"{path} is not a study folder: it has no {RECORDS_DIR}/ folder")
        files = sorted((path / RECORDS_DIR).glob("*.json"))
        return [(str(file), _decode(file.read_text(encoding="utf-8"), str(file))) for file in files]
    if not path.is_file():
        raise FileNotFoundError(f"results not found: {path} (pass a study folder or its {RESULTS_FILE})")
    found = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                found.append((f"{path}:{number}", _decode(line, f"{path}:{number}")))
    return found


def _decode(text: str, where: str) -> dict[str, Any]:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: not a valid run record ({err.msg})") from err
    if not isinstance(record, dict):
        raise ValueError(f"{where}: not a valid run record (not a JSON object)")
    return record
