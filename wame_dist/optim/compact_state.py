r"""WAME's compact state: ``zeta``, ``z`` and ``theta`` stored in bfloat16 and rounded stochastically.

``WAME(..., state_dtype="bf16")`` keeps the three real-valued states of a float32 weight in bfloat16: 7 bytes
per weight with the int8 ``prev_sign``, against 13 for ``state_dtype="fp32"`` (the state in the parameter's
dtype). Each step reads the stored values into float32, applies the unchanged rule (any implementation) and
writes the new values back rounded *stochastically*:

.. math::
   \mathrm{round}(x) = \lceil x \rceil_{bf16} \text{ with probability }
       \frac{x - \lfloor x \rfloor_{bf16}}{\lceil x \rceil_{bf16} - \lfloor x \rfloor_{bf16}},
   \text{ else } \lfloor x \rfloor_{bf16}

(rounding of the magnitude), so :math:`E[\mathrm{round}(x)] = x`. Rounding to nearest would bias the moving
averages: :math:`\theta_t = \alpha\theta_{t-1} + (1-\alpha)g_t^2` with :math:`\alpha = 0.9` loses every
change below half a bfloat16 spacing (:math:`2^{-9}` relative), i.e. whenever :math:`g_t^2` is within about
2% of :math:`\theta_{t-1}`, so :math:`\theta` sticks; unbiased rounding keeps the average's expectation.

The random bits are keyed, not drawn, so a run is reproducible bit for bit and every implementation rounds
alike. A parameter sits at element ``offset`` of row ``i`` (:meth:`WAME.place`: by default ``i`` is its
index among the optimizer's parameters and ``offset`` 0; inside DeepSpeed ZeRO-1/2 a partition sits at its
place in its group's flat buffer, the same on any number of ranks). At step ``t`` its element ``e`` (in
row-major order) takes two hashes

.. math::
   h_k = \mathrm{lowbias32}((\mathrm{key}(t, i, k) + \mathrm{offset} + e) \bmod 2^{32}), \quad k \in \{0, 1\}

(:mod:`wame_dist.hashing`); ``zeta`` rounds with the low 16 bits of :math:`h_0`, ``z`` with its high 16,
``theta`` with the low 16 of :math:`h_1` (:data:`NOISE`). Rounding with 16 bits ``r`` adds ``r`` to the
float32's bit pattern and keeps its high 16 bits: the magnitude rounds up exactly when the low 16 bits plus
``r`` carry, with probability (low 16 bits) / 2**16. An infinity's low bits are 0, so it stays; NaN is
stored as bfloat16's quiet NaN ``0x7FC0``. A value that was stored in bfloat16 comes back unchanged (its
low bits are 0), so a step skipped for an overflow leaves the state as it was.

What this changes: a stored value is within one bfloat16 spacing (:math:`2^{-7}` relative at most) of the
float32 rule's, unbiased; ``zeta`` may sit up to one spacing outside ``zeta_bounds`` (``zeta_min`` = 0.01 is
not a bfloat16 number), which the next step's clamp treats as any out-of-bounds value. For bfloat16
parameters the state is bfloat16 already and ``"bf16"`` changes nothing.

Where it runs: the fused CPU kernel reads the bfloat16 state and rounds in registers, with the same bits
(``csrc/wame_cpu.cpp``), for contiguous float32 parameters. Every other case (single-tensor, multi-tensor,
CUDA, other layouts) runs the rule on float32 copies that exist only during ``step`` and rounds them with
:func:`stochastic_round_` (torch ops, about 20-40 ns per element on a 2-core CPU): memory saved, time not.
"""

from __future__ import annotations

import torch
from torch import Tensor

from wame_dist.hashing import MASK32, key_of, lowbias32

#: ``state_dtype`` -> the dtype zeta, z and theta are stored in (None: the parameter's).
STATE_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}

#: The states stored compactly.
COMPACT_KEYS = ("zeta", "z", "theta")

#: Where each compact state's 16 random bits come from: (k of its hash h_k, the bits' shift in it).
NOISE = {"zeta": (0, 0), "z": (0, 16), "theta": (1, 0)}

#: bfloat16's quiet NaN, in which every NaN is stored (its bits as an int16).
_NAN = 0x7FC0

#: Elements hashed at a time: a chunk's int64 temporaries (256 KiB each) stay in cache across the hash's ops.
_CHUNK = 1 << 15


def storage_dtype(state_dtype: str, param: Tensor) -> torch.dtype:
    """The dtype ``zeta``, ``z`` and ``theta`` of ``param`` are stored in."""
    return STATE_DTYPES[state_dtype] or param.dtype


def keyed_bits(key: int, first: int, n: int, device: torch.device) -> Tensor:
    """``lowbias32((key + first + e) mod 2**32)`` for ``e`` in ``[0, n)`` (int64): the 32 random bits of
    ``n`` consecutive elements starting at position ``first`` (:data:`NOISE` says which 16 each state
    takes)."""
    positions = torch.arange(first, first + n, dtype=torch.int64, device=device)
    return lowbias32((key + positions) & MASK32)


def stochastic_round_(out: Tensor, value: Tensor, key: int, shift: int = 0, offset: int = 0) -> Tensor:
    """Writes the float32 ``value`` into the bfloat16 ``out`` (same shape), rounded stochastically with
    bits ``shift`` to ``shift + 15`` of ``lowbias32((key + offset + e) mod 2**32)`` for the element at
    row-major position ``e`` (``key``: :func:`wame_dist.hashing.key_of`); returns ``out``."""
    flat_value = value.reshape(-1).float()
    rounded = torch.empty(flat_value.shape, dtype=torch.int16, device=flat_value.device)
    for start in range(0, flat_value.numel(), _CHUNK):
        piece = flat_value[start : start + _CHUNK]
        bits = keyed_bits(key, offset + start, piece.numel(), piece.device)
        noise = ((bits >> shift) & 0xFFFF).to(torch.int32)
        bits = (piece.view(torch.int32) + noise) >> 16  # the high 16 bits, with the carry or not
        rounded[start : start + piece.numel()] = torch.where(piece.isnan(), _NAN, bits).to(torch.int16)
    out.view(torch.int16).copy_(rounded.view(value.shape))
    return out


def round_state_(stored: list[Tensor], computed: list[Tensor], step: int, row: int, offset: int) -> None:
    """Writes the float32 ``computed`` zeta, z, theta of a parameter placed at (``row``, ``offset``) back
    into their compact ``stored`` tensors after step ``step``."""
    for name, out, value in zip(COMPACT_KEYS, stored, computed, strict=True):
        k, shift = NOISE[name]
        stochastic_round_(out, value, key_of(step, row, k), shift, offset)
