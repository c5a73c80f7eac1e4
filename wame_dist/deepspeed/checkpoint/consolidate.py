"""Undoing ZeRO's partitioning: every parameter's full fp32 master weight and optimizer state, by name.

The optimizer state is taken as DeepSpeed saved it, without knowing the optimizer: a state tensor that is
one-dimensional and as long as the rank's partition is partitioned like the weights (WAME's ``prev_sign``,
``zeta``, ``z``, ``theta``; each keeps its dtype, so ``prev_sign`` stays int8); anything else must be a
per-group value equal on every rank (WAME's 0-dim ``step``) and is kept as it is for every parameter of the
group. Both :mod:`.export` and :mod:`.partition` work from this one form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from wame_dist.deepspeed.checkpoint.layout import BF16_OPTIMIZER_FLAVOR, Checkpoint, CheckpointError

#: Optimizer-level values that ZeRO saves beside the state (those present in the source are carried over).
GLOBAL_KEYS = ("loss_scaler", "dynamic_loss_scale", "overflow", "clip_grad")


@dataclass
class ParamGroup:
    """One optimizer parameter group: its parameters in the optimizer's order and its settings."""

    names: list[str]
    hyperparameters: dict[str, Any]  #: the group's settings (lr, alpha, etas, ...), without "params"


@dataclass
class Consolidated:
    """A ZeRO checkpoint's optimizer side with the partitioning undone."""

    source: Checkpoint
    groups: list[ParamGroup]
    shapes: dict[str, torch.Size]  #: every optimized parameter, in group order
    master: dict[str, Tensor]  #: flat fp32 master weight per parameter
    state: dict[str, dict[str, Any]]  #: per parameter: flat partitioned state tensors and per-group values
    state_keys: list[str]  #: the optimizer's state keys in saved order
    param_dtype: torch.dtype  #: dtype of the model's parameters (the low-precision copy under bf16/fp16)
    globals: dict[str, Any]  #: the GLOBAL_KEYS the source holds

    def group_values(self, names: list[str]) -> dict[str, Any]:
        """The per-group (not element-wise) state values shared by ``names``; they must agree."""
        values = {key: value for key, value in self.state[names[0]].items() if not is_elementwise(value)}
        for name in names[1:]:
            for key, value in values.items():
                if not _same(self.state[name].get(key), value):
                    raise CheckpointError(
                        f"optimizer state {key!r} of {name!r} differs from that of {names[0]!r}, so the two "
                        "cannot share a (sub-)group in the output; keep the source's layout settings"
                    )
        return values


def is_elementwise(value: Any) -> bool:
    """Whether a consolidated state value holds one element per parameter element (else it is a per-group
    value such as ``step``)."""
    return torch.is_tensor(value) and value.dim() == 1


def consolidate(ckpt: Checkpoint) -> Consolidated:
    """The full per-parameter tensors of a ZeRO-1/2/3 checkpoint (see the module docstring)."""
    groups, master, state = (_zero3 if ckpt.stage == 3 else _zero12)(ckpt)
    saved_shapes = {
        name: shape for shapes in ckpt.model_states["param_shapes"] for name, shape in shapes.items()
    }
    shapes = {name: torch.Size(saved_shapes[name]) for group in groups for name in group.names}
    module = ckpt.model_states["module"]
    first = groups[0].names[0]
    state_keys = list(next((s for s in state.values() if s), {}))
    return Consolidated(
        source=ckpt,
        groups=groups,
        shapes=shapes,
        master=master,
        state=state,
        state_keys=state_keys,
        param_dtype=module[first].dtype if first in module else torch.float32,
        globals={key: ckpt.optim_states[0][key] for key in GLOBAL_KEYS if key in ckpt.optim_states[0]},
    )


def round_robin_order(count: int, world_size: int) -> list[int]:
    """DeepSpeed's ``round_robin_gradients`` order of a group's ``count`` parameters: the flat position k
    holds parameter ``order[k]`` (stage_1_and_2.py ``_round_robin_reorder``)."""
    return [i for j in range(min(world_size, count)) for i in range(j, count, world_size)]


def _zero12(ckpt: Checkpoint) -> tuple[list[ParamGroup], dict[str, Tensor], dict[str, dict[str, Any]]]:
    first = ckpt.optim_states[0]
    param_groups = first["base_optimizer_state"]["param_groups"]
    shapes_per_group = ckpt.model_states["param_shapes"]
    if len(param_groups) != len(shapes_per_group):
        raise CheckpointError(
            f"{_where(ckpt)}: {len(param_groups)} optimizer groups but param_shapes of "
            f"{len(shapes_per_group)}"
        )
    alignment_paddings = first.get("param_alignment_paddings")
    round_robin = ckpt.flavor != BF16_OPTIMIZER_FLAVOR and ckpt.zero_config.round_robin_gradients
    groups, master, state = [], {}, {}
    for g, flat_shapes in enumerate(shapes_per_group):
        flat_names = list(flat_shapes)
        paddings = alignment_paddings[g] if alignment_paddings else [0] * len(flat_names)
        param_id = param_groups[g]["params"][0]
        per_rank = [sd["base_optimizer_state"]["state"].get(param_id, {}) for sd in ckpt.optim_states]
        fp32 = [sd["single_partition_of_fp32_groups"][g].detach() for sd in ckpt.optim_states]
        # ZeRO's optimizer saves its fp32 slice without the group's trailing padding, BF16_Optimizer with it.
        stripped = ckpt.flavor != BF16_OPTIMIZER_FLAVOR
        sizes = {
            t.numel() + (sd["group_paddings"][g] if stripped else 0) for t, sd in zip(fp32, ckpt.optim_states)
        }
        if len(sizes) != 1:
            raise CheckpointError(
                f"{_where(ckpt)}: the ranks' partitions of group {g} differ in size ({sizes})"
            )
        size = sizes.pop()
        fp32 = [torch.cat([t.flatten(), t.new_zeros(size - t.numel())]) for t in fp32]
        flats = {"": fp32, **_partitioned(ckpt, f"group {g}", per_rank, size)}
        flats = {key: torch.cat(parts) for key, parts in flats.items()}  # the whole flattened group
        values = _group_values(ckpt, f"group {g}", per_rank, size)
        offset, full = 0, {}
        for name, padding in zip(flat_names, paddings):
            numel = math.prod(flat_shapes[name])
            full[name] = {key: flat[offset : offset + numel].clone() for key, flat in flats.items()}
            offset += numel + padding
        names = flat_names
        if round_robin:
            names = [""] * len(flat_names)
            for position, index in enumerate(round_robin_order(len(flat_names), ckpt.world_size)):
                names[index] = flat_names[position]
        for name in names:
            master[name] = full[name].pop("")
            state[name] = _in_order(per_rank[0], {**full[name], **values})
        groups.append(ParamGroup(names, _hyperparameters(param_groups[g])))
    return groups, master, state


def _zero3(ckpt: Checkpoint) -> tuple[list[ParamGroup], dict[str, Tensor], dict[str, dict[str, Any]]]:
    world_size = ckpt.world_size
    inner = [sd["optimizer_state_dict"] for sd in ckpt.optim_states]
    param_groups = inner[0]["param_groups"]
    sub_shapes = ckpt.model_states["param_shapes"]
    sub_ids = [k for group in param_groups for k in group["params"]]
    if sorted(sub_ids) != list(range(len(sub_shapes))):
        raise CheckpointError(
            f"{_where(ckpt)}: the optimizer's sub-groups {sub_ids} do not match the {len(sub_shapes)} "
            "sub-groups of param_shapes"
        )
    master, state = {}, {}
    for k, shapes in enumerate(sub_shapes):
        pieces = {name: math.ceil(math.prod(shape) / world_size) for name, shape in shapes.items()}
        size = sum(pieces.values())
        per_rank = [sd["state"].get(k, {}) for sd in inner]
        fp32 = [sd["fp32_flat_groups"][k].detach().flatten() for sd in ckpt.optim_states]
        if any(t.numel() != size for t in fp32):
            raise CheckpointError(
                f"{_where(ckpt)}: sub-group {k} holds {[t.numel() for t in fp32]} fp32 elements per rank, "
                f"not the {size} that {world_size} ranks give; unknown ZeRO-3 layout"
            )
        flats = {"": fp32, **_partitioned(ckpt, f"sub-group {k}", per_rank, size)}
        values = _group_values(ckpt, f"sub-group {k}", per_rank, size)
        offset = 0
        for name, shape in shapes.items():
            numel, piece = math.prod(shape), pieces[name]
            full = {
                key: torch.cat([part[offset : offset + piece] for part in parts])[:numel].clone()
                for key, parts in flats.items()
            }
            offset += piece
            master[name] = full.pop("")
            state[name] = _in_order(per_rank[0], {**full, **values})
    groups = [
        ParamGroup([name for k in group["params"] for name in sub_shapes[k]], _hyperparameters(group))
        for group in param_groups
    ]
    return groups, master, state


def _partitioned(
    ckpt: Checkpoint, where: str, per_rank: list[dict[str, Any]], size: int
) -> dict[str, list[Tensor]]:
    """Per key, every rank's partition of the state tensors partitioned like the weights."""
    keys = [key for key, value in per_rank[0].items() if _is_partition(value, size)]
    for rank, rank_state in enumerate(per_rank):
        if [key for key, value in rank_state.items() if _is_partition(value, size)] != keys:
            raise CheckpointError(
                f"{_where(ckpt)}: {where} of rank {rank} holds state {sorted(rank_state)} of other sizes "
                f"than rank 0's {sorted(per_rank[0])}; the ranks' files do not belong together"
            )
    return {key: [rank_state[key].detach().flatten() for rank_state in per_rank] for key in keys}


def _group_values(ckpt: Checkpoint, where: str, per_rank: list[dict[str, Any]], size: int) -> dict[str, Any]:
    """The non-partitioned state values (WAME's ``step``), checked equal on every rank."""
    values = {key: value for key, value in per_rank[0].items() if not _is_partition(value, size)}
    for key, value in values.items():
        if torch.is_tensor(value) and value.dim() > 0:
            raise CheckpointError(
                f"{_where(ckpt)}: optimizer state {key!r} of {where} has shape {tuple(value.shape)}, neither "
                f"the partition's ({size},) nor a scalar; unknown layout"
            )
        if not all(_same(rank_state.get(key), value) for rank_state in per_rank):
            raise CheckpointError(f"{_where(ckpt)}: the ranks disagree on optimizer state {key!r} of {where}")
    return values


def _is_partition(value: Any, size: int) -> bool:
    return torch.is_tensor(value) and value.dim() == 1 and value.numel() == size


def _same(a: Any, b: Any) -> bool:
    if torch.is_tensor(a) or torch.is_tensor(b):
        return torch.is_tensor(a) and torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b)
    return a == b


def _in_order(saved: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    return {key: values[key] for key in saved}


def _hyperparameters(group: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in group.items() if key != "params"}


def _where(ckpt: Checkpoint) -> str:
    return repr(str(ckpt.folder))
