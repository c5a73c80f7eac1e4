"""Table 2 of Mosca & Magoulas (ESANN 2017), as printed, for side-by-side comparison."""

from __future__ import annotations

from typing import NamedTuple


class PaperRow(NamedTuple):
    """One row of the paper's Table 2: test accuracy (%), best-validation epoch, minutes per run."""

    acc_mean: float
    acc_sigma: float
    acc_min: float
    acc_max: float
    epoch_mean: float
    epoch_sigma: float
    epoch_min: int
    epoch_max: int
    minutes: float


#: The paper's title of each data set it reports.
PAPER_DATASETS = {"mnist": "MNIST", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}

#: (dataset, optimizer) -> the paper's row.
PAPER_TABLE2 = {
    ("mnist", "sgd"): PaperRow(99.29, 0.04, 99.20, 99.36, 46.30, 11.08, 11, 92, 23),
    ("mnist", "rmsprop"): PaperRow(99.53, 0.03, 99.47, 99.60, 44.80, 19.56, 12, 98, 47),
    ("mnist", "adam"): PaperRow(99.53, 0.04, 99.45, 99.60, 49.30, 18.78, 14, 90, 49),
    ("mnist", "wame"): PaperRow(99.52, 0.03, 99.47, 99.58, 33.90, 11.08, 13, 94, 28),
    ("cifar10", "sgd"): PaperRow(79.83, 0.34, 79.36, 80.49, 99.35, 0.79, 98, 100, 392),
    ("cifar10", "rmsprop"): PaperRow(89.87, 0.26, 89.31, 90.58, 90.85, 6.44, 71, 98, 456),
    ("cifar10", "adam"): PaperRow(90.26, 0.26, 89.66, 90.60, 91.55, 7.02, 76, 100, 478),
    ("cifar10", "wame"): PaperRow(90.80, 0.17, 90.41, 91.11, 86.20, 9.38, 62, 100, 421),
    ("cifar100", "sgd"): PaperRow(41.52, 0.26, 41.23, 41.92, 99.33, 0.82, 98, 100, 419),
    ("cifar100", "rmsprop"): PaperRow(63.97, 0.56, 62.95, 64.80, 93.33, 5.58, 84, 100, 471),
    ("cifar100", "adam"): PaperRow(64.83, 0.42, 64.24, 65.45, 95.78, 3.82, 87, 100, 490),
    ("cifar100", "wame"): PaperRow(67.25, 0.32, 66.75, 67.87, 93.05, 6.72, 77, 100, 468),
}
