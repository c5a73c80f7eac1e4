"""The only place where wame_dist touches torch's private helpers (torch.optim's, cpp_extension's).

They change between torch releases; if one moves, this module is the single thing to mend.
"""

from __future__ import annotations

import torch
from torch.optim import optimizer as _optimizer


def group_by_device_and_dtype(
    params: list[torch.Tensor], *others: list[torch.Tensor]
) -> dict[tuple[torch.device, torch.dtype], list[list[torch.Tensor]]]:
    """Groups parallel tensor lists by the (device, dtype) of ``params``.

    torch's grouping helper insists that every list share the parameter's dtype; WAME's int8 ``prev_sign``
    does not, so only ``params`` is grouped and the other lists follow by index.
    """
    grouped = torch.optim.Optimizer._group_tensors_by_device_and_dtype([params], with_indices=True)
    return {
        key: [tensor_lists[0], *[[other[i] for i in indices] for other in others]]
        for key, (tensor_lists, indices) in grouped.items()
    }


#: Turns a 1-element tensor hyperparameter into a 0-dim tensor, leaves floats alone.
to_scalar = _optimizer._to_scalar


def scalar_dtype() -> torch.dtype:
    """The dtype torch.optim uses for the per-parameter ``step`` counter."""
    return _optimizer._get_scalar_dtype()


def foreach_supported_devices() -> list[str]:
    """Device types on which ``torch._foreach_*`` kernels exist."""
    return _optimizer._get_foreach_kernels_supported_devices()


def extension_build_directory(name: str) -> str:
    """The folder (created if missing) in which ``torch.utils.cpp_extension.load`` builds extension
    ``name`` by default: under ``TORCH_EXTENSIONS_DIR``, else torch's per-accelerator default root."""
    from torch.utils import cpp_extension

    return cpp_extension._get_build_directory(name, verbose=False)


def local_tensors(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each DTensor (FSDP2, tensor parallelism) as its local shard, a plain tensor over the same memory, so
    that in-place updates reach the DTensor; other tensors as they are. WAME is elementwise, so updating
    the shards is updating the whole, without DTensor's per-operator dispatch."""
    if not torch.distributed.is_available():
        return tensors
    from torch.distributed.tensor import DTensor

    return [t.to_local() if isinstance(t, DTensor) else t for t in tensors]


def replaced_by_fully_shard(param: torch.Tensor) -> bool:
    """Whether FSDP2's ``fully_shard`` took ``param`` and put a sharded copy (a new DTensor parameter) in its
    place on the module: FSDP2 marks each parameter it replaces with ``_fsdp_orig_uid``."""
    return hasattr(param, "_fsdp_orig_uid")
