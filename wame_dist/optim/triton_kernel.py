"""The fused WAME kernel for CUDA tensors, written in Triton: one pass over memory per element.

It computes what ``_single_tensor_wame`` computes, in float32 for float32, float16 and bfloat16 tensors
(rounded once when stored). On a machine without a GPU it runs under Triton's interpreter
(``TRITON_INTERPRET=1`` set before triton is imported), which is how the tests check it.

torch.amp's fused-optimizer protocol: ``grad_scale`` and ``found_inf`` (0-dim float32 tensors on the
device, or None) are read through pointers, so no value crosses to the host: a non-zero ``found_inf`` masks
every store (the step changes nothing), and each gradient is multiplied by ``1 / grad_scale`` as it is read.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_BLOCK = 1024  # elements per program: 4 KiB of fp32 per tensor, 8 warps keep the memory system busy


@triton.jit
def _wame_kernel(
    w_ptr, g_ptr, prev_ptr, zeta_ptr, z_ptr, theta_ptr, n, grad_scale_ptr, found_inf_ptr,
    lr, decay, weight_decay, alpha, one_minus_alpha, eta_minus, eta_plus, zeta_min, zeta_max, eps,
    MAXIMIZE: tl.constexpr, DECAY: tl.constexpr, LITERAL: tl.constexpr, BLOCK: tl.constexpr,
    HAS_GRAD_SCALE: tl.constexpr, HAS_FOUND_INF: tl.constexpr,
):  # fmt: skip
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    if HAS_FOUND_INF:
        mask = mask & (tl.zeros([BLOCK], dtype=tl.float32) == tl.load(found_inf_ptr))
    weight = tl.load(w_ptr + offsets, mask=mask).to(tl.float32)
    grad = tl.load(g_ptr + offsets, mask=mask).to(tl.float32)
    prev = tl.load(prev_ptr + offsets, mask=mask).to(tl.float32)
    zeta = tl.load(zeta_ptr + offsets, mask=mask).to(tl.float32)
    z = tl.load(z_ptr + offsets, mask=mask).to(tl.float32)
    theta = tl.load(theta_ptr + offsets, mask=mask).to(tl.float32)
    if HAS_GRAD_SCALE:
        grad = grad * tl.math.div_rn(1.0, tl.load(grad_scale_ptr).to(tl.float32))
    if MAXIMIZE:
        grad = -grad
    if DECAY == 1:
        grad = tl.fma(weight, weight_decay, grad)
    if DECAY == 2:
        weight = weight * decay
    sign = tl.where(grad > 0, 1.0, tl.where(grad < 0, -1.0, 0.0))  # sign(NaN) = 0
    agreement = sign * prev
    grown = tl.minimum(zeta * eta_plus, zeta_max)
    shrunk = tl.maximum(zeta * eta_minus, zeta_min)
    zeta = tl.where(agreement > 0, grown, tl.where(agreement < 0, shrunk, zeta))
    z = tl.fma(one_minus_alpha, zeta - z, z)
    theta = tl.fma(one_minus_alpha * grad, grad, theta * alpha)
    if LITERAL:  # noqa: SIM108 (a constexpr branch: the kernel is compiled without the other side)
        denom = theta + eps
    else:
        denom = tl.sqrt_rn(theta) + eps
    weight = weight + tl.math.div_rn(-lr * (z * grad), denom)
    tl.store(w_ptr + offsets, weight.to(w_ptr.dtype.element_ty), mask=mask)
    tl.store(prev_ptr + offsets, sign.to(tl.int8), mask=mask)
    tl.store(zeta_ptr + offsets, zeta.to(zeta_ptr.dtype.element_ty), mask=mask)
    tl.store(z_ptr + offsets, z.to(z_ptr.dtype.element_ty), mask=mask)
    tl.store(theta_ptr + offsets, theta.to(theta_ptr.dtype.element_ty), mask=mask)


def wame_step_(
    params, grads, prev_signs, zetas, zs, thetas, *,
    lr, alpha, eta_minus, eta_plus, zeta_min, zeta_max, eps, weight_decay, decoupled_weight_decay, literal,
    maximize, grad_scale=None, found_inf=None,
) -> None:  # fmt: skip
    """Launches the kernel once per tensor (ZeRO hands it one flat partition per group)."""
    decay_mode = 0 if weight_decay == 0 else (2 if decoupled_weight_decay else 1)
    for w, g, prev, zeta, z, theta in zip(params, grads, prev_signs, zetas, zs, thetas):
        n = w.numel()
        _wame_kernel[(triton.cdiv(n, _BLOCK),)](
            w, g, prev, zeta, z, theta, n,
            # an absent scalar's pointer: any tensor, never read (its HAS_* flag below is False)
            w if grad_scale is None else grad_scale, w if found_inf is None else found_inf,
            lr, 1.0 - lr * weight_decay, weight_decay, alpha, 1.0 - alpha,
            eta_minus, eta_plus, zeta_min, zeta_max, eps,
            MAXIMIZE=maximize, DECAY=decay_mode, LITERAL=literal, BLOCK=_BLOCK,
            HAS_GRAD_SCALE=grad_scale is not None, HAS_FOUND_INF=found_inf is not None,
        )  # fmt: skip
