"""``write_report``: Table 2, Figure 1 and the significance tests from a study's finished runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

from wame_dist.report.environment import environment_markdown
from wame_dist.report.figure1 import plot_training_loss
from wame_dist.report.paired import paired_differences, paired_markdown
from wame_dist.report.paper import PAPER_DATASETS
from wame_dist.report.results import check_one_environment, chosen_runs, read_runs
from wame_dist.report.significance import significance, significance_markdown
from wame_dist.report.table2 import table2_markdown, table2_rows, write_table2_csv


def write_report(
    results_path: str | Path, out_dir: str | Path, *, mixed_environments: bool = False
) -> list[Path]:
    """Reads the runs at ``results_path`` (a study folder or a results file,
    :func:`wame_dist.report.results.read_runs`) and writes the report into ``out_dir`` (created if needed).

    Files: ``table2.md``, ``table2.csv``, ``figure1_<dataset>_<model>.png`` per data set,
    ``friedman.md`` / ``friedman.json`` and ``paired.md`` / ``paired.json``. Returns their paths. Which
    runs count is decided by :func:`wame_dist.report.results.chosen_runs` (the runs marked final, else
    all). Runs from more than one environment are refused (``ValueError``) unless
    ``mixed_environments``; either way ``table2.md`` ends with the Environment section listing what
    produced them.
    """
    groups = chosen_runs(read_runs(results_path))
    if not mixed_environments:
        check_one_environment(groups)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    rows = table2_rows(groups)
    table_md = out / "table2.md"
    table_md.write_text(table2_markdown(rows) + "\n" + environment_markdown(groups), encoding="utf-8")
    written = [table_md, write_table2_csv(rows, out / "table2.csv")]

    for (dataset, model), by_optimizer in groups.items():
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{dataset}_{model}")
        title = f"{PAPER_DATASETS.get(dataset, dataset)} ({model}): average training loss"
        written.append(plot_training_loss(by_optimizer, title, out / f"figure1_{name}.png"))

    tests = significance(groups)
    tests_md, tests_json = out / "friedman.md", out / "friedman.json"
    tests_md.write_text(significance_markdown(tests), encoding="utf-8")
    tests_json.write_text(json.dumps(tests, indent=2) + "\n", encoding="utf-8")
    pairs = paired_differences(groups)
    pairs_md, pairs_json = out / "paired.md", out / "paired.json"
    pairs_md.write_text(paired_markdown(pairs), encoding="utf-8")
    pairs_json.write_text(json.dumps(pairs, indent=2) + "\n", encoding="utf-8")
    return [*written, tests_md, tests_json, pairs_md, pairs_json]
