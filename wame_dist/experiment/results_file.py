"""The results file: JSON Lines, one finished run a line, keyed by (dataset, model, optimizer, seed, lr).

Appending takes a lock (several runs finish at once) and rewrites the file atomically, so a crash never
leaves a half-written line: the file is always the last complete version.
"""

from __future__ import annotations

import fcntl
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from wame_dist import atomic


def key_of(record: dict[str, Any]) -> tuple:
    k = record["key"]
    return k["dataset"], k["model"], k["optimizer"], int(k["seed"]), float(k["lr"])


class ResultsFile:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @contextmanager
    def _locked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def records(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def finished(self) -> dict[tuple, dict[str, Any]]:
        """The recorded runs by key (a key recorded twice: the last line)."""
        return {key_of(r): r for r in self.records()}

    def append(self, record: dict[str, Any]) -> None:
        with self._locked():
            text = self.path.read_text() if self.path.exists() else ""
            atomic.write_text(self.path, text + json.dumps(record) + "\n")
