"""Carrying out a study: initial weights, learning-rate tuning, the final runs, the report.

1. One initial-weights file per seed, written once and shared by every optimizer of that seed.
2. ``tune`` (if the study has a grid): every optimizer gets the same budget, one run per rate of its grid
   and tuning seed; the rate with the best mean best-validation accuracy is chosen (ties: the first in
   the grid) and written to ``tuned_lr.json``.
3. The final runs, optimizers x seeds, at the chosen (or documented default) rates.
4. ``results.jsonl`` (the union of the runs' records) and ``wame-dist report`` on them.

Runs go ``parallel`` at a time, each in its own process(es) (the plan: :mod:`wame_dist.experiment.plan`).
A run the study folder has a record of is not run again; one that was killed resumes from its last epoch
checkpoint. A failed run does not stop the others; the failures are listed at the end (and running the
study again retries only them).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from wame_dist import atomic
from wame_dist.experiment import plan
from wame_dist.experiment.records import StudyRecords
from wame_dist.experiment.runs import RunFailed, RunSpec, execute, record_result
from wame_dist.experiment.study import StudyConfig
from wame_dist.training.progress import Progress


class StudyFailed(RuntimeError):
    """Some runs failed; the message lists them (the others' results are recorded)."""


def run_all(
    study: StudyConfig, specs: Iterable[RunSpec], out: Path, parallel: int, progress: Progress
) -> None:
    """Runs the specs that ``out`` has no record of; raises :class:`StudyFailed` listing failures."""
    todo = [spec for _, spec in plan.prepare(study, list(specs), out)]
    failures = []
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = {pool.submit(execute, study, spec, out): spec for spec in todo}
        for finished, future in enumerate(as_completed(futures), 1):
            spec = futures[future]
            try:
                future.result()
            except RunFailed as error:
                failures.append(str(error))
                progress.log(f"[{finished}/{len(todo)}] FAILED {spec.name(study)}")
                continue
            record = record_result(study, spec, out)
            progress.log(
                f"[{finished}/{len(todo)}] {spec.name(study)}: test {100 * record['test_acc_at_best']:.2f}% "
                f"at epoch {record['best_epoch']}"
            )
    if failures:
        raise StudyFailed(
            f"{len(failures)} run(s) failed; run the study again to retry them:\n" + "\n".join(failures)
        )


def tune(study: StudyConfig, out: Path, parallel: int, progress: Progress) -> dict[str, float]:
    """Chooses each optimizer's rate on the validation set (or another's, ``tune.same_as``); returns (and
    writes) the chosen rates."""
    grid = plan.tuning_grid(study)
    run_all(study, plan.tuning_runs(study), out, parallel, progress)
    finished = StudyRecords(out).finished()
    chosen, scores = {}, {}
    for name, rates in grid.items():
        scores[name] = {}
        for lr in rates:
            best = [
                max(e["val_acc"] for e in finished[RunSpec(name, s, lr, "tune").key(study)]["epochs"])
                for s in study.tune_seeds()
            ]
            scores[name][repr(lr)] = statistics.mean(best)
        chosen[name] = max(rates, key=lambda lr: scores[name][repr(lr)])
    # a best rate at either end of its grid may not be the best rate: widen that grid and run again
    on_edge = [
        name for name, rates in grid.items() if len(rates) > 1 and chosen[name] in (min(rates), max(rates))
    ]
    chosen.update({name: chosen[source] for name, source in study.tune.same_as.items()})
    tuned = {"chosen": chosen, "mean_best_val_acc": scores, "on_grid_edge": on_edge}
    tuned |= {"same_as": study.tune.same_as} if study.tune.same_as else {}
    atomic.write_text(out / "tuned_lr.json", json.dumps(tuned, indent=1))
    progress.log("tuned learning rates: " + ", ".join(f"{k} {v:g}" for k, v in chosen.items()))
    if on_edge:
        progress.log(f"warning: the best rate of {', '.join(on_edge)} is at an end of its grid; widen it")
    return chosen


def run_study(
    study: StudyConfig, out: Path, parallel: int, progress: Progress, tuned: bool = True
) -> list[Path]:
    """Runs the whole study into ``out`` and writes its report there; returns the report's files."""
    from wame_dist.report import write_report

    rates = dict(study.lr)
    if tuned and study.tune.grid:
        rates.update(tune(study, out, parallel, progress))
    run_all(study, plan.final_runs(study, rates), out, parallel, progress)
    # A study resumed after a code change holds runs of both: its own report lists every environment (its
    # Environment section) rather than failing at the end; `wame-dist report` alone refuses such a mix.
    return [StudyRecords(out).write_results_file(), *write_report(out, out, mixed_environments=True)]
