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
alike: element ``e`` (in row-major order) of the ``i``-th updated parameter's state ``k`` (0: zeta, 1: z,
2: theta) at step ``t`` adds

.. math::
   r = \mathrm{lowbias32}((\mathrm{key}(t, i, k) + e) \bmod 2^{32}) \bmod 2^{16}

to the float32's bit pattern and clears its low 16 bits: the magnitude rounds up exactly when the low 16
bits plus ``r`` carry, with probability (low 16 bits) / 2**16 (:mod:`wame_dist.hashing`). Infinities and
NaN are stored as they are. A value that was stored in bfloat16 comes back unchanged (its low bits are 0),
so a step skipped for an overflow leaves the state as it was.

What this changes: a stored value is within one bfloat16 spacing (:math:`2^{-7}` relative at most) of the
float32 rule's, unbiased; ``zeta`` may sit up to one spacing outside ``zeta_bounds`` (``zeta_min`` = 0.01 is
not a bfloat16 number), which the next step's clamp treats as any out-of-bounds value. For bfloat16
parameters the state is bfloat16 already and ``"bf16"`` changes nothing. The float32 copies exist only
during ``step``; the rounding runs as torch ops over the state (about 20-40 ns per element on a 2-core CPU),
so this path saves memory, not time, until a fused kernel rounds in registers.
"""

from __future__ import annotations

import torch
from torch import Tensor

from wame_dist.hashing import MASK32, key_of, lowbias32

#: ``state_dtype`` -> the dtype zeta, z and theta are stored in (None: the parameter's).
STATE_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}

#: The states stored compactly, in the order of their key ``k``.
COMPACT_KEYS = ("zeta", "z", "theta")

#: Elements hashed at a time: a chunk's int64 temporaries (256 KiB each) stay in cache across the hash's ops.
_CHUNK = 1 << 15


def storage_dtype(state_dtype: str, param: Tensor) -> torch.dtype:
    """The dtype ``zeta``, ``z`` and ``theta`` of ``param`` are stored in."""
    return STATE_DTYPES[state_dtype] or param.dtype


def stochastic_round_(out: Tensor, value: Tensor, key: Tensor) -> Tensor:
    """Writes the float32 ``value`` into the bfloat16 ``out`` (same shape), rounded stochastically with the
    bits keyed by ``key`` (0-dim int64, :func:`wame_dist.hashing.key_of`) and each element's row-major
    position; returns ``out``."""
    flat_value = value.reshape(-1).float()
    rounded = torch.empty_like(flat_value)
    for start in range(0, flat_value.numel(), _CHUNK):
        piece = flat_value[start : start + _CHUNK]
        positions = torch.arange(start, start + piece.numel(), dtype=torch.int64, device=piece.device)
        noise = (lowbias32((key + positions) & MASK32) & 0xFFFF).to(torch.int32)
        bits = (piece.view(torch.int32) + noise) & -0x10000
        rounded[start : start + piece.numel()] = torch.where(
            torch.isfinite(piece), bits.view(torch.float32), piece
        )
    out.copy_(rounded.view(value.shape))
    return out


def round_state_(stored: list[Tensor], computed: list[Tensor], step: int, index: int) -> None:
    """Writes the float32 ``computed`` zeta, z, theta of the ``index``-th updated parameter back into their
    compact ``stored`` tensors after step ``step``."""
    for k, (out, value) in enumerate(zip(stored, computed)):
        stochastic_round_(out, value, key_of(step, index, k, device=value.device))
