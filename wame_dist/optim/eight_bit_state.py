r"""WAME's 8-bit state: ``zeta``, ``z``, ``theta`` as one-byte codes and ``prev_sign`` in two bits.

``WAME(..., state_dtype="8bit")`` (Algorithm 1) stores per weight, in place of 13 bytes:

* ``zeta``: an int8 exponent ``k`` on zeta's multiplicative lattice, :math:`\zeta = \eta_+^k`. Growth
  (:math:`\times\eta_+`) is ``k + 1``, exact. Shrinking (:math:`\times\eta_-`) lands between lattice points
  (:math:`\log_{\eta_+}\eta_-` = -12.63 for the paper's 0.1 and 1.2) and is rounded stochastically to a
  neighbour, unbiased in :math:`\zeta`. The bounds become the lattice points inside them:
  :math:`[\eta_+^{k_{min}}, \eta_+^{k_{max}}]`, ``k_min = ceil(log zeta_min / log eta_plus)``, ``k_max =
  floor(...)``: [0.0105, 95.4] for the paper's [0.01, 100]. zeta starts at 1 (``k = 0``). Bounds more than
  127 steps from 1 are refused.
* ``z``: a uint8 code on a logarithmic grid, 0 meaning exactly 0 (its initial value) and codes 1..255
  spanning :math:`[(1-\alpha)\,\eta_+^{k_{min}}, \eta_+^{k_{max}}]` (the smallest positive ``z`` one step
  can make, to the largest ``zeta``): 4.7% apart for the paper's settings; rounded stochastically.
* ``theta``: a uint8 code per element and a float32 scale per block of :data:`BLOCK` elements (the block's
  largest ``theta``): :math:`\theta = s \cdot 2^{-(255 - c)/8}` for codes 1..255 (9% apart, 32 octaves
  below the block's largest), 0 for code 0; rounded stochastically.
* ``prev_sign``: -1, 0, +1 as two bits, four per byte.

3.27 bytes per weight: 1 + 1 + 1 + 1/4 + 4/256. Each step decodes into float32 (and int8 signs), applies the
unchanged rule with any implementation, and encodes the result back. Every rounding is stochastic and
unbiased in the value (not in its logarithm): between neighbours ``lo < v < hi`` it takes ``hi`` with
probability ``(v - lo) / (hi - lo)``, with 16 keyed random bits as :mod:`wame_dist.optim.compact_state`
draws them (same keys, places and :data:`~wame_dist.optim.compact_state.NOISE`), so runs are reproducible
bit for bit. A value already on its grid is encoded as it is, so a skipped step changes nothing. Blocks
are cut in the parameter's own row-major order: ``state_dtype="8bit"`` is refused under DeepSpeed's ZeRO,
whose partitions would cut them and whose checkpoint tools cut every state like its weight (stage 0 works).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from wame_dist.hashing import key_of
from wame_dist.optim.compact_state import NOISE, keyed_bits

#: Elements per block of ``theta`` sharing one float32 scale.
BLOCK = 256

#: The state tensors of one weight tensor and their dtypes (codes, packed signs, per-block scales).
DTYPES = {
    "prev_sign": torch.uint8,
    "zeta": torch.int8,
    "z": torch.uint8,
    "theta": torch.uint8,
    "theta_scale": torch.float32,
}

#: Codes 0..255 of theta relative to its block's scale: 0, then 2**(-(255 - c) / 8) (float32).
_THETA_GRID = torch.tensor([0.0] + [2.0 ** (-(255 - c) / 8) for c in range(1, 256)], dtype=torch.float32)


def exponent_bounds(eta_plus: float, zeta_min: float, zeta_max: float) -> tuple[int, int]:
    """zeta's lattice exponents inside its bounds, ``(k_min, k_max)``; raises ValueError beyond int8."""
    k_min = math.ceil(math.log(zeta_min) / math.log(eta_plus) - 1e-9)
    k_max = math.floor(math.log(zeta_max) / math.log(eta_plus) + 1e-9)
    if k_min < -127 or k_max > 127:
        raise ValueError(
            f"state_dtype='8bit' keeps zeta as eta_plus**k with k an int8; zeta_bounds "
            f"({zeta_min}, {zeta_max}) need k in [{k_min}, {k_max}] with eta_plus={eta_plus}: use bounds "
            "within eta_plus**+-127"
        )
    return k_min, k_max


#: zeta's lattice, z's grid (float32) and zeta's exponent bounds (k_min, k_max).
Grids = tuple[Tensor, Tensor, int, int]


def _grids(group: dict) -> Grids:
    """zeta's lattice (index k + 127) and z's grid (code 0..255) as float32, for a parameter group."""
    return _grids_of(group["etas"][1], *group["zeta_bounds"], group["alpha"])


@functools.cache
def _grids_of(
    eta_plus: float, zeta_min: float, zeta_max: float, alpha: float
) -> tuple[Tensor, Tensor, int, int]:
    """:func:`_grids` of these hyperparameters (built once: every step decodes and encodes with them)."""
    k_min, k_max = exponent_bounds(eta_plus, zeta_min, zeta_max)
    zeta_grid = torch.tensor([eta_plus**k for k in range(-127, 128)], dtype=torch.float32)
    low, high = (1 - alpha) * eta_plus**k_min, eta_plus**k_max
    z_grid = torch.tensor(
        [0.0] + [low * (high / low) ** ((c - 1) / 254) for c in range(1, 256)], dtype=torch.float32
    )
    return zeta_grid, z_grid, k_min, k_max


def create(param: Tensor) -> dict[str, Tensor]:
    """The initial 8-bit state of ``param``: prev_sign 0, zeta 1, z 0, theta 0."""
    n = param.numel()
    device = param.device
    return {
        "prev_sign": torch.full((-(-n // 4),), 0b01010101, dtype=DTYPES["prev_sign"], device=device),
        "zeta": torch.zeros(param.shape, dtype=DTYPES["zeta"], device=device),
        "z": torch.zeros(param.shape, dtype=DTYPES["z"], device=device),
        "theta": torch.zeros(param.shape, dtype=DTYPES["theta"], device=device),
        "theta_scale": torch.zeros(-(-n // BLOCK), dtype=DTYPES["theta_scale"], device=device),
    }


def decode(state: dict[str, Tensor], param: Tensor, group: dict) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """prev_sign (int8), zeta, z, theta (float32) of ``param`` from its 8-bit ``state``."""
    zeta_grid, z_grid, _, _ = _grids(group)
    device, shape, n = param.device, param.shape, param.numel()
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8, device=device)
    signs = ((state["prev_sign"][:, None] >> shifts) & 3).reshape(-1)[:n].to(torch.int8) - 1
    # 1-d indices, so that each lookup is a copy (a 0-dim index would give a view of the shared grid)
    zeta = zeta_grid.to(device)[state["zeta"].reshape(-1).to(torch.int64) + 127].reshape(shape)
    z = z_grid.to(device)[state["z"].reshape(-1).to(torch.int64)].reshape(shape)
    per_element_scale = state["theta_scale"].repeat_interleave(BLOCK)[:n]
    theta = (_THETA_GRID.to(device)[state["theta"].reshape(-1).to(torch.int64)] * per_element_scale).reshape(
        shape
    )
    return signs.reshape(shape), zeta, z, theta


def _uniforms(step: int, row: int, offset: int, n: int, device: torch.device) -> dict[str, Tensor]:
    """The keyed 16 random bits of each of ``n`` elements for each state, as uniforms in (0, 1): each hash
    ``h_k`` computed once (:func:`wame_dist.optim.compact_state.keyed_bits`), its halves as NOISE says."""
    hashes = {k: keyed_bits(key_of(step, row, k), offset, n, device) for k in {k for k, _ in NOISE.values()}}
    return {
        name: (((hashes[k] >> shift) & 0xFFFF).to(torch.float64) + 0.5) / 65536.0
        for name, (k, shift) in NOISE.items()
    }


def _round_to_grid(value: Tensor, decoded, guess: Tensor, top: int, uniform: Tensor) -> Tensor:
    """Stochastic, unbiased rounding of float32 ``value`` (flat) onto codes ``0..top``, ``decoded(codes)``
    being their float32 values (ascending; what :func:`decode` gives), from ``guess``, each value's lower
    neighbour give or take one. A value equal to a code's value keeps that code. Returns the codes."""
    index = guess.clamp(0, top - 1)
    index = torch.where(decoded(index) > value, (index - 1).clamp_min(0), index)
    index = torch.where(decoded(index + 1) <= value, (index + 1).clamp_max(top - 1), index)
    low, high = decoded(index).double(), decoded(index + 1).double()
    p_up = ((value.double() - low) / (high - low)).clamp(0.0, 1.0)
    return index + (uniform < p_up).to(index.dtype)


def encode_(
    state: dict[str, Tensor],
    values: tuple[Tensor, Tensor, Tensor, Tensor],
    group: dict,
    step: int,
    row: int,
    offset: int,
) -> None:
    """Writes float32 zeta, z, theta and int8 prev_sign (``values``) into the 8-bit ``state`` after step
    ``step``, rounding stochastically with the keys of place (``row``, ``offset``). Works through the
    tensor in chunks of :data:`_CHUNK` elements (whole blocks and sign bytes), so that its float64
    temporaries stay in cache."""
    grids = tuple(g.to(values[1].device) if torch.is_tensor(g) else g for g in _grids(group))
    flat_values = [v.reshape(-1) for v in values]
    codes = {key: state[key].view(-1) for key in ("zeta", "z", "theta")}
    n = flat_values[1].numel()
    for start in range(0, n, _CHUNK):
        stop = min(n, start + _CHUNK)
        chunk = {key: code[start:stop] for key, code in codes.items()}
        chunk["theta_scale"] = state["theta_scale"][start // BLOCK : -(-stop // BLOCK)]
        chunk["prev_sign"] = state["prev_sign"][start // 4 : -(-stop // 4)]
        part = tuple(v[start:stop] for v in flat_values)
        _encode_chunk(chunk, part, group, grids, step, row, offset + start)


#: Elements encoded at a time: a multiple of BLOCK and of 4 (whole theta blocks and prev_sign bytes).
_CHUNK = 1 << 16


def _encode_chunk(state, values, group, grids, step: int, row: int, offset: int) -> None:
    """:func:`encode_` on one chunk: flat views of the codes and values, the chunk's scales and sign bytes."""
    prev_sign, zeta, z, theta = values
    zeta_grid, z_grid, k_min, k_max = grids
    device, n = zeta.device, zeta.numel()
    uniform = _uniforms(step, row, offset, n, device)

    flat = zeta.float().clamp(zeta_grid[k_min + 127], zeta_grid[k_max + 127])
    guess = torch.floor(torch.log(flat.double()) / math.log(group["etas"][1])).to(torch.int64) + 127
    index = _round_to_grid(flat, zeta_grid.__getitem__, guess, 254, uniform["zeta"])
    state["zeta"].copy_((index - 127).clamp(k_min, k_max).to(torch.int8))

    flat = z.float().clamp(0.0, z_grid[-1])
    ratio = math.log(float(z_grid[2]) / float(z_grid[1]))
    guess = torch.floor(torch.log(flat.double().clamp_min(float(z_grid[1])) / float(z_grid[1])) / ratio)
    guess = torch.where(flat < z_grid[1], 0, guess.to(torch.int64) + 1)
    index = _round_to_grid(flat, z_grid.__getitem__, guess, 255, uniform["z"])
    state["z"].copy_(index.to(torch.uint8))

    flat = theta.float()
    scale = torch.nn.functional.pad(flat, (0, (-n) % BLOCK)).reshape(-1, BLOCK).amax(dim=1)
    state["theta_scale"].copy_(scale)
    per_element = scale.repeat_interleave(BLOCK)[:n]
    theta_grid = _THETA_GRID.to(device)

    def theta_of(codes: Tensor) -> Tensor:
        return theta_grid[codes] * per_element

    relative = flat.double() / per_element.double().clamp_min(1e-300)
    guess = torch.floor(255 + 8 * torch.log2(relative.clamp_min(float(theta_grid[1]))))
    guess = torch.where(relative < float(theta_grid[1]), 0, guess.to(torch.int64))
    index = _round_to_grid(flat, theta_of, guess, 255, uniform["theta"])
    state["theta"].copy_(index.to(torch.uint8))

    codes = torch.nn.functional.pad((prev_sign + 1).to(torch.uint8), (0, (-n) % 4), value=1).reshape(-1, 4)
    state["prev_sign"].copy_(codes[:, 0] | codes[:, 1] << 2 | codes[:, 2] << 4 | codes[:, 3] << 6)
