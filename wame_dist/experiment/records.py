"""A study's finished runs: one record file per run, written atomically, and their union on demand.

Every process that finishes a run files that run's record as its own file (:meth:`StudyRecords.add`:
``records/<run name>.json``, :mod:`wame_dist.report.record`), written to a temporary file and renamed. Array
tasks on different nodes never write the same file, so no correctness depends on a lock, which shared file
systems do not always honour across nodes (NFS without lockd, Lustre without ``-o flock``). What the study
has finished is the folder's listing (:meth:`StudyRecords.finished`); ``results.jsonl``, their union, is
written by the one process that reports (:meth:`StudyRecords.write_results_file`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from wame_dist import atomic
from wame_dist.report.record import RECORDS_DIR, RESULTS_FILE, Key, key_of, read_records, run_name


class StudyRecords:
    """The records of the study (or sweep) folder ``out``."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        self.folder = self.out / RECORDS_DIR

    def add(self, record: dict[str, Any]) -> Path:
        """Files ``record`` under its run's name (a record of the same run is replaced); returns its path."""
        path = self.folder / f"{run_name(record['key'])}.json"
        atomic.write_text(path, json.dumps(record, indent=1) + "\n")
        return path

    def records(self) -> list[dict[str, Any]]:
        """Every filed record, by run name."""
        if not self.folder.is_dir():
            return []
        return [record for _, record in read_records(self.out)]

    def finished(self) -> dict[Key, dict[str, Any]]:
        """The filed records by key."""
        return {key_of(r): r for r in self.records()}

    def write_results_file(self) -> Path:
        """Writes ``results.jsonl``: every filed record, one a line, by run name; returns its path."""
        path = self.out / RESULTS_FILE
        atomic.write_text(path, "".join(json.dumps(r) + "\n" for r in self.records()))
        return path
