"""Paired differences between optimizers: each one against the first of its table, seed by seed.

Runs of one seed start from the same initial weights, so the difference of a metric between two optimizers
on one seed is a paired observation. For each metric of :data:`wame_dist.report.significance.METRICS`,
over the seeds ``d_1..d_n`` with a run of both: the mean difference, its 95% confidence interval
``mean +- t(0.975, n - 1) * sd / sqrt(n)`` (Student's t, sample standard deviation) and the two-sided
Wilcoxon signed-rank p-value (exact for small n, zero differences dropped; 1.0 when all are zero).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from scipy import stats

from wame_dist.report.paper import PAPER_DATASETS
from wame_dist.report.results import Groups, display_name
from wame_dist.report.significance import METRICS, complete_blocks, values_by_seed

#: The confidence level of the intervals.
CONFIDENCE = 0.95


def paired_summary(differences: Sequence[float]) -> dict:
    """Mean, 95% interval and Wilcoxon p-value of paired differences (see the module's docstring)."""
    n = len(differences)
    mean = sum(differences) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1))
    half = stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1) * sd / math.sqrt(n)
    nonzero = [d for d in differences if d != 0]
    p_value = float(stats.wilcoxon(nonzero).pvalue) if nonzero else 1.0
    return {"n": n, "mean": mean, "sd": sd, "low": mean - half, "high": mean + half, "wilcoxon_p": p_value}


def paired_differences(groups: Groups) -> list[dict]:
    """For each (dataset, model) with at least 2 optimizers and 2 complete seeds: every optimizer after the
    first against the first, on every metric, as :func:`paired_summary`."""
    results = []
    for (dataset, model), by_optimizer in groups.items():
        seeds, _ = complete_blocks(by_optimizer)
        optimizers = list(by_optimizer)
        if len(optimizers) < 2 or len(seeds) < 2:
            continue
        baseline, others = optimizers[0], optimizers[1:]
        entry: dict = {"dataset": dataset, "model": model, "baseline": baseline, "seeds": seeds}
        entry["pairs"] = {other: {} for other in others}
        for metric, (read, _) in METRICS.items():
            value = values_by_seed(by_optimizer, read)
            for other in others:
                differences = [value[seed, other] - value[seed, baseline] for seed in seeds]
                entry["pairs"][other][metric] = paired_summary(differences)
        results.append(entry)
    return results


def paired_markdown(results: Sequence[dict]) -> str:
    """:func:`paired_differences` as Markdown, one table per (dataset, model); accuracies in points."""
    parts = [
        "# Paired differences\n\n",
        "Each optimizer minus the first of its table, seed by seed (the same initial weights): mean, "
        f"{CONFIDENCE:.0%} confidence interval (Student's t) and Wilcoxon signed-rank p-value. "
        "Accuracies in percentage points.\n",
    ]
    for entry in results:
        title = PAPER_DATASETS.get(entry["dataset"], entry["dataset"])
        parts.append(f"\n## {title} ({entry['model']}), against {display_name(entry['baseline'])}\n\n")
        parts.append(f"Seeds: {len(entry['seeds'])}\n\n")
        parts.append("| optimizer | metric | mean difference | 95% interval | Wilcoxon p |\n")
        parts.append("| --- | --- | ---: | ---: | ---: |\n")
        for other, metrics in entry["pairs"].items():
            for metric, (_, label) in METRICS.items():
                s = metrics[metric]
                scale = 100.0 if metric == "test_acc_at_best" else 1.0
                interval = f"[{s['low'] * scale:+.3f}, {s['high'] * scale:+.3f}]"
                parts.append(
                    f"| {display_name(other)} | {label} | {s['mean'] * scale:+.3f} | {interval} "
                    f"| {s['wilcoxon_p']:.3g} |\n"
                )
    return "".join(parts)
