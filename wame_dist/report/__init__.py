"""The paper's Table 2, Figure 1 and Friedman aligned-ranks tests, from a results file."""

from wame_dist.report.cli import main
from wame_dist.report.friedman import AlignedRanksResult, friedman_aligned_ranks
from wame_dist.report.results import Run, chosen_runs, read_runs
from wame_dist.report.write import write_report

__all__ = [
    "AlignedRanksResult",
    "Run",
    "chosen_runs",
    "friedman_aligned_ranks",
    "main",
    "read_runs",
    "write_report",
]
