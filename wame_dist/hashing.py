"""Counter-based random bits: the same bits for the same key on CPU and CUDA, on any number of ranks.

Chris Wellons' ``lowbias32`` integer hash (bias 0.17 of the ideal), computed in int64 tensor arithmetic
kept below 2**63, so every device gives the same bits (the same functions take Python integers, and the
fused CPU kernel computes it in uint32). Randomness keyed by what it is for (a run's seed,
an epoch, a sample's index, an element's position) instead of drawn from a generator does not depend on
which rank holds the element or in what order ranks draw. Used by the dropout masks
(:mod:`wame_dist.models.dropout`) and the stochastic rounding of WAME's compact state
(:mod:`wame_dist.optim.compact_state`).
"""

from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF

#: 32-bit values: held in an int64 tensor, or a Python integer.
Words = int | torch.Tensor


def _mul32(x: Words, c: int) -> Words:
    """``x * c mod 2**32`` for ``x`` in [0, 2**32) without int64 overflow (16-bit halves of ``c``)."""
    low = x * (c & 0xFFFF)
    high = ((x * (c >> 16)) & 0xFFFF) << 16
    return (low + high) & MASK32


def lowbias32(x: Words) -> Words:
    """Wellons' lowbias32 integer hash of 32-bit values held in an int64 tensor (or a Python integer)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def chain(key: Words, value: Words) -> Words:
    """Folds a 64-bit ``value`` into a 32-bit ``key`` (one hash per 32-bit word)."""
    for word in ((value & MASK32), (value >> 32) & MASK32):
        key = lowbias32((key + word) & MASK32)
    return key


def key_of(*parts: int) -> int:
    """The 32-bit key of a sequence of integers, chained in order."""
    key = 0
    for part in parts:
        key = chain(key, part)
    return key
