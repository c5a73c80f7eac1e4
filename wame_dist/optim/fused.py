"""The fused WAME implementation: which kernel serves which device, and whether it is available.

CPU tensors go to the C++/OpenMP kernel (:mod:`wame_dist.optim.cpu_kernel`), CUDA tensors to the Triton
kernel (:mod:`wame_dist.optim.triton_kernel`). A kernel handles tensors that are dense and share their
parameter's strides (what torch creates for parameters, gradients and ``*_like`` state); any other row is
updated by the multi-tensor implementation instead, so results never depend on memory layout.
"""

from __future__ import annotations

import functools
import importlib.util
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from wame_dist.optim import _torch_compat, cpu_kernel

CPU_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
CUDA_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def unavailable_reason(params: list[Tensor]) -> str | None:
    """Why the fused kernel cannot update ``params``, or None when it can."""
    for p in params:
        kind = p.device.type
        if kind == "cpu":
            if p.dtype not in CPU_DTYPES:
                return f"the fused CPU kernel supports {CPU_DTYPES}, not {p.dtype}"
            try:
                cpu_kernel.load()
            except cpu_kernel.KernelUnavailable as error:
                return str(error)
        elif kind == "cuda":
            if p.dtype not in CUDA_DTYPES:
                return f"the fused CUDA kernel supports {CUDA_DTYPES}, not {p.dtype}"
            if importlib.util.find_spec("triton") is None:
                return "the fused CUDA kernel needs Triton (pip install triton)"
        else:
            return f"no fused WAME kernel exists for {kind} tensors"
    return None


def require(params: list[Tensor]) -> None:
    """Raises a RuntimeError saying what to do when ``fused=True`` cannot be honoured."""
    reason = unavailable_reason(params)
    if reason is not None:
        raise RuntimeError(f"WAME(fused=True): {reason}. Pass fused=None to fall back to foreach.")


def available(params: list[Tensor]) -> bool:
    """True when the fused kernel can update ``params``; warns once per reason when it cannot."""
    reason = unavailable_reason(params)
    if reason is not None:
        _warn_once(reason)
    return reason is None


@functools.cache
def _warn_once(reason: str) -> None:
    warnings.warn(
        f"WAME: {reason}; using the multi-tensor implementation instead (pass fused=False to silence this).",
        RuntimeWarning,
        stacklevel=4,
    )


def _kernel_for(device: torch.device) -> Callable[..., None]:
    if device.type == "cpu":
        return cpu_kernel.load().wame_step_
    from wame_dist.optim import triton_kernel

    return triton_kernel.wame_step_


def _is_dense(tensor: Tensor) -> bool:
    """Contiguous in the default or the channels-last layout: the kernels walk the storage linearly."""
    if tensor.is_contiguous():
        return True
    channels_last = {4: torch.channels_last, 5: torch.channels_last_3d}.get(tensor.dim())
    return channels_last is not None and tensor.is_contiguous(memory_format=channels_last)


def takes_compact(row: tuple[Tensor, ...]) -> bool:
    """Whether a kernel reads and rounds a row's compact (bfloat16) state itself: the CPU kernel does, for
    a contiguous float32 parameter (the keyed bits follow the row-major position, i.e. the storage order)."""
    param, grad, prev_sign, zeta, z, theta = row
    return (
        param.device.type == "cpu"
        and param.dtype == grad.dtype == torch.float32
        and zeta.dtype == z.dtype == theta.dtype == torch.bfloat16
        and prev_sign.dtype == torch.int8
        and all(t.is_contiguous() for t in row)
    )


def _kernel_can_take(row: tuple[Tensor, ...]) -> bool:
    """A row (param, grad, prev_sign, zeta, z, theta) is walked element by element in storage order: all
    must be dense with the parameter's strides, and all but the int8 prev_sign of its dtype (or the row's
    state compact, see :func:`takes_compact`). Checked per row at every step, so written for speed."""
    param, grad, prev_sign, zeta, z, theta = row
    dtype, stride = param.dtype, param.stride()
    if zeta.dtype != dtype:
        return takes_compact(row)
    return (
        grad.dtype == z.dtype == theta.dtype == dtype
        and prev_sign.dtype == torch.int8
        and grad.stride() == prev_sign.stride() == zeta.stride() == z.stride() == theta.stride() == stride
        and _is_dense(param)
    )


def fused_wame(
    params: list[Tensor],
    grads: list[Tensor],
    prev_signs: list[Tensor],
    zetas: list[Tensor],
    zs: list[Tensor],
    thetas: list[Tensor],
    *,
    multi_tensor_fallback: Callable[..., None],
    grad_scale: Tensor | None,
    found_inf: Tensor | None,
    state_keys: list[tuple[int, int, int] | None] | None = None,
    **hyper: float | bool,
) -> None:
    """Updates the tensors in place with the fused kernel of their device; rows a kernel cannot take go to
    ``multi_tensor_fallback`` with the same keyword hyperparameters. ``grad_scale`` and ``found_inf``
    (torch.amp's, see :func:`wame_dist.optim.wame.wame`) are sent to each device, as torch's fused Adam
    sends them. Rows with compact state (only rows :func:`takes_compact` accepts) come with what keys their
    stochastic rounding in ``state_keys``: (step, row, offset), see :mod:`wame_dist.optim.compact_state`."""
    keys = state_keys or [None] * len(params)
    grouped = _torch_compat.group_by_device_and_dtype(params, grads, prev_signs, zetas, zs, thetas, keys)
    for (device, _), (*tensor_lists, row_keys) in grouped.items():
        amp = {
            "grad_scale": None if grad_scale is None else grad_scale.to(device, non_blocking=True),
            "found_inf": None if found_inf is None else found_inf.to(device, non_blocking=True),
        }
        dense, other = [], []
        for *row, key in zip(*tensor_lists, row_keys):
            takes = key is not None or _kernel_can_take(row)  # a key: the caller checked takes_compact
            (dense if takes else other).append((*row, key))
        if dense:
            compact = {}
            if any(key is not None for *_, key in dense):  # only the CPU kernel takes keys
                placed = [key or (0, 0, 0) for *_, key in dense]
                compact = dict(zip(("state_steps", "state_rows", "state_offsets"), map(list, zip(*placed))))
            _kernel_for(device)(*map(list, zip(*(row[:-1] for row in dense))), **hyper, **amp, **compact)
        if other:
            multi_tensor_fallback(*map(list, zip(*(row[:-1] for row in other))), **hyper, **amp)
