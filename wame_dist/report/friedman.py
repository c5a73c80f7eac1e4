"""The Friedman aligned-ranks test (Hodges & Lehmann 1962), as given by Garcia et al. (2010)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

#: Aligned values are rounded to this many decimals before ranking, so that differences that are equal
#: in exact arithmetic (but not in floating point) tie, as the test intends.
ALIGN_DECIMALS = 12


@dataclass(frozen=True)
class AlignedRanksResult:
    """The statistic ``T``, its chi-square p-value with ``df = k - 1``, and each treatment's mean rank."""

    statistic: float
    p_value: float
    df: int
    n_blocks: int
    mean_ranks: tuple[float, ...]


def friedman_aligned_ranks(data: ArrayLike) -> AlignedRanksResult:
    """Friedman aligned-ranks test on ``data`` of shape (n blocks, k treatments), e.g. seeds x optimizers.

    Each block's mean is subtracted from its values (Hodges-Lehmann alignment); the ``kn`` aligned values
    are ranked together, 1 = smallest, ties sharing their mean rank. With ``R_j`` the rank total of
    treatment j and ``R_i`` that of block i (S. Garcia, A. Fernandez, J. Luengo, F. Herrera, "Advanced
    nonparametric tests for multiple comparisons in the design of experiments in computational
    intelligence and data mining", Information Sciences 180 (2010) 2044-2064)::

        T = (k - 1) [sum_j R_j^2 - (k n^2 / 4) (kn + 1)^2]
            / ([kn (kn + 1) (2kn + 1)] / 6 - (1 / k) sum_i R_i^2)

    which is compared with a chi-square distribution with ``k - 1`` degrees of freedom. ``T`` does not
    depend on the ranking direction, so "higher is better" and "lower is better" give the same test;
    ``mean_ranks`` are in ascending order of the values (a high mean rank = high values).
    """
    x = np.asarray(data, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 2:
        raise ValueError(f"need a 2-D array of at least 2 blocks x 2 treatments, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("data must be finite")
    n, k = x.shape
    aligned = np.round(x - x.mean(axis=1, keepdims=True), ALIGN_DECIMALS)
    ranks = stats.rankdata(aligned).reshape(n, k)
    treatment_totals, block_totals = ranks.sum(axis=0), ranks.sum(axis=1)
    kn = k * n
    numerator = (k - 1) * (np.sum(treatment_totals**2) - (k * n**2 / 4) * (kn + 1) ** 2)
    denominator = kn * (kn + 1) * (2 * kn + 1) / 6 - np.sum(block_totals**2) / k
    statistic = float(numerator / denominator)
    return AlignedRanksResult(
        statistic=statistic,
        p_value=float(stats.chi2.sf(statistic, k - 1)),
        df=k - 1,
        n_blocks=n,
        mean_ranks=tuple(float(r) for r in treatment_totals / n),
    )
