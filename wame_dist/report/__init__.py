"""The paper's Table 2, Figure 1 and Friedman aligned-ranks tests, from a study's run records.

The names below load their module on first use, so that writers of records (training, studies), which import
:mod:`wame_dist.report.record`, do not pay for plotting and statistics on every rank.
"""

import importlib

_EXPORTS = {
    "AlignedRanksResult": "wame_dist.report.friedman",
    "Run": "wame_dist.report.results",
    "chosen_runs": "wame_dist.report.results",
    "friedman_aligned_ranks": "wame_dist.report.friedman",
    "main": "wame_dist.report.cli",
    "read_runs": "wame_dist.report.results",
    "write_report": "wame_dist.report.write",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'wame_dist.report' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
