"""``wame-dist study STUDY.json``: the paper's protocol for one data set, end to end."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wame_dist.experiment.runner import StudyFailed, run_study
from wame_dist.experiment.study import load_study
from wame_dist.training.progress import Progress


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="wame-dist study",
        description="Initial weights per seed, learning-rate tuning, every optimizer x seed, and the report "
        "(Table 2, Figure 1, Friedman tests) into --out. Finished runs are skipped on a re-run.",
    )
    parser.add_argument("study", help="a study file, e.g. configs/studies/digits.json")
    parser.add_argument(
        "--out", required=True, help="folder for results.jsonl, tuned_lr.json, the report, runs/"
    )
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time")
    parser.add_argument("--seeds", type=int, default=None, help="override the study's number of seeds")
    parser.add_argument("--epochs", type=int, default=None, help="override the study's epochs")
    parser.add_argument("--no-tune", action="store_true", help="use the study's documented rates")
    args = parser.parse_args(argv)
    study = load_study(args.study, seeds=args.seeds, epochs=args.epochs)
    try:
        files = run_study(
            study, Path(args.out), args.parallel, Progress(enabled=True), tuned=not args.no_tune
        )
    except StudyFailed as error:  # runs failed (their logs say why); bad input is the dispatcher's business
        print(f"wame-dist study: {error}", file=sys.stderr)
        return 1
    for path in files:
        print(path)
    return 0
