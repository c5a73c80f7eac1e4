"""The ``wame-dist report STUDY_DIR|RESULTS.jsonl --out DIR`` command."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from wame_dist.report.write import write_report


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``wame-dist report``."""
    parser = argparse.ArgumentParser(
        prog="wame-dist report",
        description="Write Table 2 (Markdown, CSV), Figure 1 (PNG per data set) and Friedman aligned-ranks "
        "tests (Markdown, JSON) from a study's finished runs: its folder (records/, one file a run) or a "
        "results file (JSON Lines, one run a line).",
    )
    parser.add_argument("results", help="a study or sweep folder, or a results file (.jsonl)")
    parser.add_argument("--out", required=True, help="folder to write the report into (created if needed)")
    parser.add_argument(
        "--mixed-environments",
        action="store_true",
        help="report runs from different code, software or accelerators together (refused by default; the "
        "report's Environment section lists each)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``wame-dist report``; prints the files written. Missing, empty or malformed results
    ends with argparse's usage error (exit status 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        paths = write_report(args.results, args.out, mixed_environments=args.mixed_environments)
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    for path in paths:
        print(path)
    return 0
