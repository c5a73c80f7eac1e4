"""Progress for long runs, printed by rank 0 only (other ranks get a silent twin)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


class Progress:
    """Timestamped lines on stderr; inside an epoch, a line at every tenth of it (at most one per 10 s)."""

    def __init__(self, enabled: bool, stream=None) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.started = time.perf_counter()

    def log(self, message: str) -> None:
        if self.enabled:
            print(f"[{time.perf_counter() - self.started:8.1f}s] {message}", file=self.stream, flush=True)

    def steps(self, items: Iterable[T], label: str) -> Iterator[T]:
        total = len(items) if hasattr(items, "__len__") else None  # type: ignore[arg-type]
        last = time.perf_counter()
        for i, item in enumerate(items, 1):
            yield item
            tenth = self.enabled and total and i < total and i % max(1, total // 10) == 0
            if tenth and time.perf_counter() - last >= 10:
                self.log(f"{label}: step {i}/{total}")
                last = time.perf_counter()
