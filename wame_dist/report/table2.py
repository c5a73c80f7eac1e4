"""Table 2: test accuracy at the best-validation epoch, that epoch, and the time to reach it."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wame_dist.report.paper import PAPER_DATASETS, PAPER_TABLE2
from wame_dist.report.results import Groups, Run, display_name


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation (ddof = 1; NaN for a single value), minimum and maximum."""

    mean: float
    sigma: float
    min: float
    max: float


def summarise(values: Sequence[float]) -> Summary:
    """The :class:`Summary` of ``values`` (at least one)."""
    array = np.asarray(values, dtype=np.float64)
    sigma = float(array.std(ddof=1)) if len(array) > 1 else math.nan
    return Summary(float(array.mean()), sigma, float(array.min()), float(array.max()))


@dataclass(frozen=True)
class Row:
    """One optimizer's line of Table 2 for one (dataset, model); accuracies in %, time in minutes."""

    dataset: str
    model: str
    optimizer: str
    lrs: tuple[float, ...]
    n_runs: int
    n_seeds: int
    accuracy: Summary
    epoch: Summary
    minutes: float


def table2_rows(groups: Groups) -> list[Row]:
    """Table 2's rows, one per (dataset, model, optimizer) of the chosen runs, in ``groups`` order."""
    rows = []
    for (dataset, model), by_optimizer in groups.items():
        for optimizer, runs in by_optimizer.items():
            rows.append(_row(dataset, model, optimizer, runs))
    return rows


def _row(dataset: str, model: str, optimizer: str, runs: Sequence[Run]) -> Row:
    return Row(
        dataset=dataset,
        model=model,
        optimizer=optimizer,
        lrs=tuple(sorted({run.lr for run in runs})),
        n_runs=len(runs),
        n_seeds=len({run.seed for run in runs}),
        accuracy=summarise([100 * run.test_acc_at_best for run in runs]),
        epoch=summarise([run.best_epoch for run in runs]),
        minutes=float(np.mean([run.time_to_best_s for run in runs])) / 60,
    )


CSV_COLUMNS = (
    "dataset",
    "model",
    "optimizer",
    "lr",
    "n_runs",
    "n_seeds",
    "acc_mean",
    "acc_sigma",
    "acc_min",
    "acc_max",
    "epoch_mean",
    "epoch_sigma",
    "epoch_min",
    "epoch_max",
    "minutes_mean",
)


def write_table2_csv(rows: Sequence[Row], path: Path) -> Path:
    """Writes ``rows`` as CSV (:data:`CSV_COLUMNS`; accuracies in %, sigma with ddof = 1, empty if NaN)."""
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(CSV_COLUMNS)
        for row in rows:
            numbers = (*_numbers(row.accuracy), *_numbers(row.epoch), row.minutes)
            writer.writerow(
                [
                    row.dataset,
                    row.model,
                    row.optimizer,
                    " ".join(f"{lr:g}" for lr in row.lrs),
                    row.n_runs,
                    row.n_seeds,
                    *("" if math.isnan(v) else repr(v) for v in numbers),
                ]
            )
    return path


def _numbers(summary: Summary) -> tuple[float, float, float, float]:
    return summary.mean, summary.sigma, summary.min, summary.max


_HEADER = (
    "| rule | source | lr | seeds | acc mean | acc sigma | acc min | acc max "
    "| epoch mean | epoch sigma | epoch min | epoch max | min/run |\n"
    "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n"
)

_NOTE = (
    "Test accuracy (%) at the epoch of best validation accuracy, that epoch (1-based), and the mean wall "
    "time in minutes of a run stopped at that epoch. sigma is the sample standard deviation across seeds "
    "(ddof = 1). Rows marked *paper* are Table 2 of Mosca & Magoulas (ESANN 2017), 20 seeds each.\n"
)


def table2_markdown(rows: Sequence[Row]) -> str:
    """Table 2 as Markdown: one table per (dataset, model), the paper's row under ours where it has one."""
    parts = ["# Table 2\n\n", _NOTE]
    experiments: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        experiments.setdefault((row.dataset, row.model), []).append(row)
    for (dataset, model), members in experiments.items():
        title = PAPER_DATASETS.get(dataset, dataset)
        parts.append(f"\n## {title} ({model})\n\n{_HEADER}")
        for row in members:
            parts.append(_markdown_line(row))
            paper = PAPER_TABLE2.get((dataset, row.optimizer))
            if paper is not None:
                cells = [f"{v:.2f}" for v in paper[:6]] + [str(paper.epoch_min), str(paper.epoch_max)]
                parts.append(
                    f"| {display_name(row.optimizer)} | *paper* | | 20 | {' | '.join(cells)} "
                    f"| {paper.minutes:g} |\n"
                )
    return "".join(parts)


def _markdown_line(row: Row) -> str:
    cells = [
        display_name(row.optimizer),
        "measured",
        " ".join(f"{lr:g}" for lr in row.lrs),
        str(row.n_seeds),
        *(_fmt(v) for v in _numbers(row.accuracy)),
        _fmt(row.epoch.mean),
        _fmt(row.epoch.sigma),
        f"{row.epoch.min:.0f}",
        f"{row.epoch.max:.0f}",
        _fmt(row.minutes),
    ]
    return f"| {' | '.join(cells)} |\n"


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}"
