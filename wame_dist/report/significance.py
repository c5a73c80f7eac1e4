"""Friedman aligned-ranks tests of the optimizers, seeds as blocks, per data set and metric."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict

from wame_dist.report.friedman import friedman_aligned_ranks
from wame_dist.report.paper import PAPER_DATASETS
from wame_dist.report.results import Groups, Run, display_name

#: Metric name -> (what it reads from a run, how the Markdown calls it).
METRICS = {
    "test_acc_at_best": (lambda run: run.test_acc_at_best, "test accuracy at best epoch"),
    "best_epoch": (lambda run: float(run.best_epoch), "best-validation epoch"),
    "time_to_best_s": (lambda run: run.time_to_best_s, "wall time to best epoch"),
}


def complete_blocks(by_optimizer: Mapping[str, Sequence[Run]]) -> tuple[list[int], list[int]]:
    """The seeds with exactly one run for every optimizer (the test's blocks), and the other seeds."""
    counts = Counter((run.seed, optimizer) for optimizer, runs in by_optimizer.items() for run in runs)
    seeds = sorted({seed for seed, _ in counts})
    usable = [seed for seed in seeds if all(counts[seed, optimizer] == 1 for optimizer in by_optimizer)]
    return usable, [seed for seed in seeds if seed not in usable]


def values_by_seed(by_optimizer: Mapping[str, Sequence[Run]], read) -> dict[tuple[int, str], float]:
    """A metric (``read``, of :data:`METRICS`) of every run, by (seed, optimizer)."""
    return {(run.seed, run.optimizer): read(run) for runs in by_optimizer.values() for run in runs}


def significance(groups: Groups) -> list[dict]:
    """For each (dataset, model), the aligned-ranks test over optimizers on each metric of :data:`METRICS`.

    Blocks are the seeds that have exactly one chosen run per optimizer (the others are listed as
    dropped). A metric is skipped, with the reason, when there are fewer than 2 optimizers or 2 blocks.
    """
    results = []
    for (dataset, model), by_optimizer in groups.items():
        seeds, dropped = complete_blocks(by_optimizer)
        optimizers = list(by_optimizer)
        entry: dict = {
            "dataset": dataset,
            "model": model,
            "optimizers": optimizers,
            "seeds": seeds,
            "dropped_seeds": dropped,
            "metrics": {},
        }
        for metric, (read, _) in METRICS.items():
            if len(optimizers) < 2 or len(seeds) < 2:
                entry["metrics"][metric] = {"skipped": "needs at least 2 optimizers and 2 complete seeds"}
                continue
            value = values_by_seed(by_optimizer, read)
            table = [[value[seed, optimizer] for optimizer in optimizers] for seed in seeds]
            result = asdict(friedman_aligned_ranks(table))
            result["mean_ranks"] = dict(zip(optimizers, result["mean_ranks"], strict=True))
            entry["metrics"][metric] = result
        results.append(entry)
    return results


def significance_markdown(results: Sequence[dict]) -> str:
    """The tests of :func:`significance` as Markdown, one table per (dataset, model)."""
    parts = [
        "# Friedman aligned-ranks tests\n\n",
        "Blocks are seeds, treatments are optimizers; each seed's mean is subtracted before all values are "
        "ranked together (Hodges-Lehmann alignment), and T is compared with a chi-square distribution "
        "with k - 1 degrees of freedom (Garcia et al., Information Sciences 180, 2010). Mean aligned "
        "ranks are ascending: a higher rank means a higher value (accuracy, epoch or time).\n",
    ]
    for entry in results:
        names = [display_name(o) for o in entry["optimizers"]]
        title = PAPER_DATASETS.get(entry["dataset"], entry["dataset"])
        parts.append(f"\n## {title} ({entry['model']})\n\n")
        dropped = f"; dropped (incomplete): {entry['dropped_seeds']}" if entry["dropped_seeds"] else ""
        parts.append(f"Seeds used: {len(entry['seeds'])}{dropped}\n\n")
        parts.append(f"| metric | T | df | p-value | {' | '.join(f'rank {n}' for n in names)} |\n")
        parts.append(f"| --- | ---: | ---: | ---: |{' ---: |' * len(names)}\n")
        for metric, (_, label) in METRICS.items():
            result = entry["metrics"][metric]
            if "skipped" in result:
                parts.append(f"| {label} | skipped: {result['skipped']} | | |{' |' * len(names)}\n")
                continue
            ranks = " | ".join(f"{result['mean_ranks'][o]:.2f}" for o in entry["optimizers"])
            test = f"{result['statistic']:.3f} | {result['df']} | {result['p_value']:.4g}"
            parts.append(f"| {label} | {test} | {ranks} |\n")
    return "".join(parts)
