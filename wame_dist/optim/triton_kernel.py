"""The fused WAME kernel for CUDA tensors, written in Triton: one pass over memory per element, one launch
for all the tensors of a step.

It computes what ``_single_tensor_wame`` computes (either variant: ``KERAS`` and ``WEIGHT_SIGN`` are
compile-time switches), in float32 for float32, float16 and bfloat16 tensors
(rounded once when stored). Like torch's fused Adam (``multi_tensor_apply``), one launch updates every
tensor of a (device, dtype) group: each program takes one block of ``_BLOCK`` elements of one tensor,
found through a block table (tensor index, first element) and a pointer table (the address of each
tensor's parameter, gradient and state), both built once per set of tensors and cached on the device.
A model of 200 parameter tensors therefore costs one launch per step, not 200.

torch.amp's fused-optimizer protocol: ``grad_scale`` and ``found_inf`` (0-dim float32 tensors on the
device, or None) are read through pointers, so no value crosses to the host: a non-zero ``found_inf`` masks
every store (the step changes nothing), and each gradient is multiplied by ``1 / grad_scale`` as it is read.

On a machine without a GPU it runs under Triton's interpreter (``TRITON_INTERPRET=1`` set before triton is
imported), which is how the tests check it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_BLOCK = 1024  # elements per program: 4 KiB of fp32 per tensor, 8 warps keep the memory system busy
_TRITON_DTYPE = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}
_TABLE_CACHE_SIZE = 8  # sets of tensors whose tables are kept (ZeRO: one flat partition per group)


@triton.jit
def _pointer(table, column, DTYPE: tl.constexpr, ALIGNED: tl.constexpr):
    """The address in ``table[column]`` as a pointer to ``DTYPE``; ALIGNED: known to be a multiple of 16 bytes
    (what lets the compiler use 16-byte vector loads and stores, as it does for aligned kernel arguments)."""
    pointer = tl.load(table + column).to(tl.pointer_type(DTYPE))
    if ALIGNED:
        pointer = tl.multiple_of(pointer, 16)
    return pointer


@triton.jit
def _wame_kernel(
    pointers, numels, block_tensor, block_start, grad_scale_ptr, found_inf_ptr,
    step_size, decay, weight_decay, one_minus_alpha, theta_decay, one_minus_theta_decay,
    eta_minus, eta_plus, zeta_min, zeta_max, eps,
    DTYPE: tl.constexpr, MAXIMIZE: tl.constexpr, DECAY: tl.constexpr, LITERAL: tl.constexpr,
    KERAS: tl.constexpr, WEIGHT_SIGN: tl.constexpr,
    BLOCK: tl.constexpr, FULL: tl.constexpr, ALIGNED: tl.constexpr,
    HAS_GRAD_SCALE: tl.constexpr, HAS_FOUND_INF: tl.constexpr,
):  # fmt: skip
    block = tl.program_id(0)
    tensor = tl.load(block_tensor + block).to(tl.int64)
    offsets = tl.multiple_of(tl.load(block_start + block), BLOCK) + tl.arange(0, BLOCK)
    mask = None if FULL else offsets < tl.load(numels + tensor)  # int64 tables: tensors over 2**31 elements
    table = pointers + tensor * 6  # row: param, grad, prev_sign, zeta, z, theta
    w_ptr = _pointer(table, 0, DTYPE, ALIGNED)
    g_ptr = _pointer(table, 1, DTYPE, ALIGNED)
    prev_ptr = _pointer(table, 2, tl.int8, ALIGNED)
    zeta_ptr = _pointer(table, 3, DTYPE, ALIGNED)
    z_ptr = _pointer(table, 4, DTYPE, ALIGNED)
    theta_ptr = _pointer(table, 5, DTYPE, ALIGNED)
    weight = tl.load(w_ptr + offsets, mask=mask).to(tl.float32)
    grad = tl.load(g_ptr + offsets, mask=mask).to(tl.float32)
    prev = tl.load(prev_ptr + offsets, mask=mask).to(tl.float32)
    zeta = tl.load(zeta_ptr + offsets, mask=mask).to(tl.float32)
    z = tl.load(z_ptr + offsets, mask=mask).to(tl.float32)
    theta = tl.load(theta_ptr + offsets, mask=mask).to(tl.float32)
    if HAS_GRAD_SCALE:
        grad = grad * tl.math.div_rn(1.0, tl.load(grad_scale_ptr).to(tl.float32))
    if HAS_FOUND_INF:  # the same value for the whole block: whole blocks' stores stay vectorised
        keep = tl.zeros([BLOCK], dtype=tl.float32) == tl.load(found_inf_ptr)
        mask = keep if FULL else mask & keep
    if WEIGHT_SIGN:
        prev_next = tl.where(weight > 0, 1.0, tl.where(weight < 0, -1.0, 0.0))  # before any decay
    if MAXIMIZE:
        grad = -grad
    if DECAY == 1:
        grad = tl.fma(weight, weight_decay, grad)
    if DECAY == 2:
        weight = weight * decay
    sign = tl.where(grad > 0, 1.0, tl.where(grad < 0, -1.0, 0.0))  # sign(NaN) = 0
    agreement = sign * prev
    if KERAS:  # zeta moves unclipped; the clipped value is averaged into z and scales the step as used / z
        zeta = tl.where(agreement > 0, zeta * eta_plus, tl.where(agreement < 0, zeta * eta_minus, zeta))
        used = tl.where(zeta < zeta_min, zeta_min, tl.where(zeta > zeta_max, zeta_max, zeta))
        z = tl.fma(one_minus_alpha, used - z, z)
        factor = tl.math.div_rn(used, z)
    else:
        grown = tl.minimum(zeta * eta_plus, zeta_max)
        shrunk = tl.maximum(zeta * eta_minus, zeta_min)
        zeta = tl.where(agreement > 0, grown, tl.where(agreement < 0, shrunk, zeta))
        z = tl.fma(one_minus_alpha, zeta - z, z)
        factor = z
    if not WEIGHT_SIGN:
        prev_next = sign
    theta = tl.fma(one_minus_theta_decay * grad, grad, theta * theta_decay)
    if LITERAL:  # noqa: SIM108 (a constexpr branch: the kernel is compiled without the other side)
        denom = theta + eps
    else:
        denom = tl.sqrt_rn(theta) + eps
    weight = weight + tl.math.div_rn(-step_size * (factor * grad), denom)
    tl.store(w_ptr + offsets, weight.to(DTYPE), mask=mask)
    tl.store(prev_ptr + offsets, prev_next.to(tl.int8), mask=mask)
    tl.store(zeta_ptr + offsets, zeta.to(DTYPE), mask=mask)
    tl.store(z_ptr + offsets, z.to(DTYPE), mask=mask)
    tl.store(theta_ptr + offsets, theta.to(DTYPE), mask=mask)


class _Blocks(NamedTuple):
    """One launch's block table: for each program, its tensor's index and its first element."""

    tensor: torch.Tensor  # int32
    start: torch.Tensor  # int64
    count: int


class _Tables:
    """The pointer, size and block tables of one set of tensors, on their device. Whole blocks and each
    tensor's last, partial block go to separate launches: only the latter need a mask, and an unmasked
    block of aligned tensors is read and written in 16-byte vectors."""

    def __init__(self, rows: list[tuple[torch.Tensor, ...]]) -> None:
        device = rows[0][0].device
        numels = [row[0].numel() for row in rows]
        self.aligned = all(t.data_ptr() % 16 == 0 for row in rows for t in row)
        self.pointers = torch.tensor(
            [t.data_ptr() for row in rows for t in row], dtype=torch.int64, device=device
        )
        self.numels = torch.tensor(numels, dtype=torch.int64, device=device)
        whole = [(i, start) for i, n in enumerate(numels) for start in range(0, n - _BLOCK + 1, _BLOCK)]
        partial = [(i, n - n % _BLOCK) for i, n in enumerate(numels) if n % _BLOCK]
        self.launches = {
            full: self._blocks(blocks, device) for full, blocks in ((True, whole), (False, partial))
        }

    @staticmethod
    def _blocks(blocks: list[tuple[int, int]], device: torch.device) -> _Blocks | None:
        if not blocks:
            return None
        tensor, start = zip(*blocks)
        return _Blocks(
            torch.tensor(tensor, dtype=torch.int32, device=device),
            torch.tensor(start, dtype=torch.int64, device=device),
            len(blocks),
        )


_tables: dict[tuple[int, ...], _Tables] = {}


def _tables_for(rows: list[tuple[torch.Tensor, ...]]) -> _Tables:
    """Tables keyed by every address and size: a reallocated tensor gets new tables, never stale ones."""
    key = tuple(x for row in rows for x in (row[0].numel(), *(t.data_ptr() for t in row)))
    if key not in _tables:
        if len(_tables) >= _TABLE_CACHE_SIZE:
            _tables.pop(next(iter(_tables)))
        _tables[key] = _Tables(rows)
    return _tables[key]


def wame_step_(
    params, grads, prev_signs, zetas, zs, thetas, *,
    lr, step_size, alpha, theta_decay, eta_minus, eta_plus, zeta_min, zeta_max, eps, weight_decay,
    decoupled_weight_decay, literal, maximize, keras, weight_sign, grad_scale=None, found_inf=None,
) -> None:  # fmt: skip
    """Updates the tensors in place, one launch per dtype (the caller groups them by device)."""
    decay_mode = 0 if weight_decay == 0 else (2 if decoupled_weight_decay else 1)
    by_dtype: dict[torch.dtype, list[tuple[torch.Tensor, ...]]] = {}
    for row in zip(params, grads, prev_signs, zetas, zs, thetas):
        if row[0].numel():
            by_dtype.setdefault(row[0].dtype, []).append(row)
    for dtype, rows in by_dtype.items():
        tables = _tables_for(rows)
        for full, blocks in tables.launches.items():
            if blocks is None:
                continue
            _wame_kernel[(blocks.count,)](
                tables.pointers, tables.numels, blocks.tensor, blocks.start,
                # an absent scalar's pointer: any tensor, never read (its HAS_* flag below is False)
                tables.numels if grad_scale is None else grad_scale,
                tables.numels if found_inf is None else found_inf,
                step_size, 1.0 - lr * weight_decay, weight_decay, 1.0 - alpha, theta_decay, 1.0 - theta_decay,
                eta_minus, eta_plus, zeta_min, zeta_max, eps,
                DTYPE=_TRITON_DTYPE[dtype], MAXIMIZE=maximize, DECAY=decay_mode, LITERAL=literal,
                KERAS=keras, WEIGHT_SIGN=weight_sign,
                BLOCK=_BLOCK, FULL=full, ALIGNED=tables.aligned,
                HAS_GRAD_SCALE=grad_scale is not None, HAS_FOUND_INF=found_inf is not None,
            )  # fmt: skip
