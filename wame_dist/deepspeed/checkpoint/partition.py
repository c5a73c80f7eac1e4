"""Partitioning consolidated state again, as DeepSpeed 0.19 would for another world size or ZeRO stage.

:func:`write_checkpoint` writes the files of one checkpoint tag so that ``engine.load_checkpoint`` of an
engine with the target world size and stage loads them natively (the rigid format it saves itself):

* ZeRO-1/2 (stage_1_and_2.py): each parameter group is flattened (in round-robin order when
  ``round_robin_gradients`` is on, with ``parameter_alignment`` paddings between parameters), padded with
  zeros to a multiple of 2 x world size and cut into equal slices, one per rank;
* ZeRO-3 (stage3.py): each parameter is cut into world-size pieces of ceil(numel / world size) elements
  (the last padded with zeros); a rank's pieces are concatenated per sub-group, sub-groups being split off
  a parameter group every ``sub_group_size`` partition elements.

Every state tensor is cut like the weights and keeps its dtype; per-group values (``step``) are copied.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from wame_dist.deepspeed._deepspeed_compat import (
    BF16_PREFIX,
    GRADIENT_CLIPPING_DEFAULT,
    Z12_MODEL_FILE,
    DtypeEnum,
    LossScaler,
    OffloadDeviceEnum,
    ZeroStageEnum,
    fragment_address,
    optim_file,
    zero3_model_file,
)
from wame_dist.deepspeed.checkpoint.consolidate import Consolidated, is_elementwise, round_robin_order
from wame_dist.deepspeed.checkpoint.layout import BF16_OPTIMIZER_FLAVOR, ZERO_FLAVOR, CheckpointError

#: ZeRO-1/2 start every rank's slice on a 4-byte boundary: groups are padded to 2 x world size elements.
NCCL_START_ALIGNMENT_FACTOR = 2


@dataclass(frozen=True)
class Target:
    """The engine the output is for: what its partitioning depends on."""

    stage: int
    world_size: int
    flavor: str  #: ZERO_FLAVOR or BF16_OPTIMIZER_FLAVOR (bf16 ZeRO-1 with fp32 gradient accumulation)
    sub_group_size: int  #: ZeRO-3
    round_robin: bool  #: ZeRO-1/2 ``round_robin_gradients`` (not under BF16_Optimizer)
    param_alignment: int  #: ZeRO-1/2 ``parameter_alignment``: elements each parameter is aligned to


def target_for(
    cons: Consolidated, world_size: int, stage: int | None = None, sub_group_size: int | None = None
) -> Target:
    """The target engine: the source's settings (read from its saved config) with the given changes."""
    source = cons.source
    stage = source.stage if stage is None else stage
    flavor = source.flavor if stage == source.stage else _flavor(cons, stage)
    aligned = source.zero_config.parameter_alignment and flavor == ZERO_FLAVOR
    element_size = torch.tensor([], dtype=cons.param_dtype).element_size()
    return Target(
        stage=stage,
        world_size=world_size,
        flavor=flavor,
        sub_group_size=source.zero_config.sub_group_size if sub_group_size is None else sub_group_size,
        round_robin=source.zero_config.round_robin_gradients and flavor == ZERO_FLAVOR,
        param_alignment=16 // math.gcd(16, element_size) if aligned else 1,
    )


def write_checkpoint(cons: Consolidated, target: Target, folder: Path) -> list[Path]:
    """Writes the files of one checkpoint tag for ``target`` into ``folder`` (which must exist)."""
    if target.stage == 3:
        optim, model_states = _zero3_files(cons, target)
        model_names = [zero3_model_file(r) for r in range(target.world_size)]
    else:
        optim, model_states = _zero12_files(cons, target)
        model_names = [Z12_MODEL_FILE]
    source = cons.source
    ds_config = _target_config(cons, target)
    written = []
    for rank, optimizer_state_dict in enumerate(optim):
        path = folder / optim_file(rank, source.prefix)
        torch.save({"optimizer_state_dict": optimizer_state_dict, **source.optim_file, **ds_config}, path)
        written.append(path)
    for name in model_names:
        torch.save({**model_states, **ds_config}, folder / name)
        written.append(folder / name)
    return written


def _flavor(cons: Consolidated, stage: int) -> str:
    """The optimizer DeepSpeed's engine picks at ``stage`` (engine.py ``_do_optimizer_sanity_check``)."""
    source = cons.source
    accumulation = (source.ds_config.get("data_types") or {}).get("grad_accum_dtype")
    offload = source.zero_config.offload_optimizer
    if (
        stage == 1
        and source.prefix == BF16_PREFIX
        and accumulation is not None
        and DtypeEnum(accumulation).value == torch.float32
        and (offload is None or offload.device != OffloadDeviceEnum.cpu)
    ):
        return BF16_OPTIMIZER_FLAVOR
    return ZERO_FLAVOR


def _target_config(cons: Consolidated, target: Target) -> dict[str, Any]:
    """The ``ds_config`` entry of the output files: the source's with the target's stage and sub-group
    size."""
    source = cons.source
    if not source.ds_config:
        return {}
    config = copy.deepcopy(source.ds_config)
    zero = config.setdefault("zero_optimization", {})
    zero["stage"] = target.stage
    if target.sub_group_size != source.zero_config.sub_group_size:
        zero["sub_group_size"] = target.sub_group_size
    return {"ds_config": config}


# ----------------------------------------------------------------------------------------------- ZeRO-1/2
def _zero12_files(cons: Consolidated, target: Target) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    world_size = target.world_size
    ranks = [_zero12_globals(cons, target) for _ in range(world_size)]
    param_groups, param_shapes = [], []
    for g, group in enumerate(cons.groups):
        names = group.names
        if target.round_robin:
            names = [names[i] for i in round_robin_order(len(names), world_size)]
        offset, paddings, offsets = 0, [], []
        for index, name in enumerate(names):
            offsets.append(offset)
            offset += cons.shapes[name].numel()
            paddings.append(0 if index == len(names) - 1 else -offset % target.param_alignment)
            offset += paddings[-1]
        real = offset
        alignment = NCCL_START_ALIGNMENT_FACTOR * world_size
        size = math.ceil(real / alignment) * alignment // world_size
        slices = {
            key: _zero12_slices(cons, names, paddings, key, size, world_size) for key in _keys(cons, names)
        }
        values = cons.group_values(names)
        master = slices.pop("")
        for rank, sd in enumerate(ranks):
            left = rank * size
            group_padding = size if real <= left else max(0, left + size - real)
            fp32 = (
                master[rank]
                if target.flavor == BF16_OPTIMIZER_FLAVOR
                else master[rank][: size - group_padding]
            )
            sd["single_partition_of_fp32_groups"].append(fp32.clone())
            sd["group_paddings"].append(group_padding)
            sd["param_slice_mappings"].append(_slice_mappings(names, cons, offsets, left, size))
            state = {**{key: parts[rank] for key, parts in slices.items()}, **_copies(values)}
            if state:
                sd["base_optimizer_state"]["state"][g] = _in_order(cons, state)
            if "param_alignment_paddings" in sd:
                sd["param_alignment_paddings"].append(list(paddings))
        param_groups.append({**group.hyperparameters, "params": [g]})
        param_shapes.append(OrderedDict((name, cons.shapes[name]) for name in names))
    for sd in ranks:
        sd["base_optimizer_state"]["param_groups"] = copy.deepcopy(param_groups)
    return ranks, _model_states(cons, target, _zero12_module(cons), param_shapes)


def _zero12_globals(cons: Consolidated, target: Target) -> dict[str, Any]:
    """A rank's optimizer state dict without the groups, keys as DeepSpeed orders them."""
    state_dict: dict[str, Any] = {}
    if target.flavor == ZERO_FLAVOR:
        state_dict.update(_loss_scaling(cons))
    state_dict["clip_grad"] = cons.globals.get(
        "clip_grad", cons.source.ds_config.get("gradient_clipping", GRADIENT_CLIPPING_DEFAULT)
    )
    state_dict["base_optimizer_state"] = {"state": {}, "param_groups": []}
    state_dict["single_partition_of_fp32_groups"] = []
    if target.flavor == ZERO_FLAVOR:
        state_dict["zero_stage"] = ZeroStageEnum(target.stage)
    state_dict["group_paddings"] = []
    if target.flavor == ZERO_FLAVOR:
        state_dict["param_alignment_paddings"] = []
    state_dict["partition_count"] = [target.world_size] * len(cons.groups)
    state_dict["ds_version"] = cons.source.optim_states[0].get(
        "ds_version", cons.source.optim_file.get("ds_version")
    )
    state_dict["param_slice_mappings"] = []
    return state_dict


def _zero12_slices(
    cons: Consolidated, names: list[str], paddings: list[int], key: str, size: int, world_size: int
) -> list[Tensor]:
    """Rank slices of one flattened group of ``key`` ("" for the fp32 master weights)."""
    pieces = []
    for name, padding in zip(names, paddings):
        tensor = _tensor(cons, name, key)
        pieces += [tensor, tensor.new_zeros(padding)]
    flat = torch.cat(pieces)
    flat = torch.cat([flat, flat.new_zeros(size * world_size - flat.numel())])
    return [flat[rank * size : (rank + 1) * size].clone() for rank in range(world_size)]


def _slice_mappings(
    names: list[str], cons: Consolidated, offsets: list[int], left: int, size: int
) -> OrderedDict[str, fragment_address]:
    """Where each parameter's fragment lies in the rank's slice (DeepSpeed's ``param_slice_mappings``)."""
    mappings = OrderedDict()
    for name, offset in zip(names, offsets):
        start, end = max(offset, left), min(offset + cons.shapes[name].numel(), left + size)
        if start < end:
            mappings[name] = fragment_address(numel=end - start, start=start - left)
    return mappings


def _zero12_module(cons: Consolidated) -> dict[str, Any]:
    """The full module state dict; from ZeRO-3 (which saves empty parameters) the master weights are cast to
    the parameters' dtype, as DeepSpeed's step leaves them."""
    module = cons.source.model_states["module"]
    if cons.source.stage != 3:
        return module
    shared = cons.source.model_states.get("shared_params") or {}
    full = OrderedDict()
    for key, tensor in module.items():
        name = shared.get(key, key)
        if name in cons.master:
            full[key] = cons.master[name].view(cons.shapes[name]).to(tensor.dtype)
        else:
            full[key] = tensor
    return full


# -------------------------------------------------------------------------------------------------- ZeRO-3
def _zero3_files(cons: Consolidated, target: Target) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    world_size = target.world_size
    sub_groups, param_groups = [], []
    for group in cons.groups:
        ids = []
        for names in _sub_groups(cons, group.names, target):
            ids.append(len(sub_groups))
            sub_groups.append(names)
        param_groups.append({**group.hyperparameters, "params": ids})
    ranks = [
        {
            "zero_stage": ZeroStageEnum.weights,
            **_loss_scaling(cons),
            "partition_count": world_size,
            "optimizer_state_dict": {"state": {}, "param_groups": copy.deepcopy(param_groups)},
            "fp32_flat_groups": [],
        }
        for _ in range(world_size)
    ]
    for k, names in enumerate(sub_groups):
        values = cons.group_values(names)
        for key in _keys(cons, names):
            parts = [
                torch.cat([_zero3_piece(_tensor(cons, name, key), rank, world_size) for name in names])
                for rank in range(world_size)
            ]
            for rank, sd in enumerate(ranks):
                if key:
                    sd["optimizer_state_dict"]["state"].setdefault(k, {})[key] = parts[rank]
                else:
                    sd["fp32_flat_groups"].append(parts[rank])
        for sd in ranks:
            state = {**sd["optimizer_state_dict"]["state"].pop(k, {}), **_copies(values)}
            if state:
                sd["optimizer_state_dict"]["state"][k] = _in_order(cons, state)
    param_shapes = [OrderedDict((name, cons.shapes[name]) for name in names) for names in sub_groups]
    return ranks, _model_states(cons, target, _zero3_module(cons), param_shapes)


def _sub_groups(cons: Consolidated, names: list[str], target: Target) -> list[list[str]]:
    """A parameter group's sub-groups (stage3.py ``_create_fp16_sub_groups``)."""
    partition = {name: math.ceil(cons.shapes[name].numel() / target.world_size) for name in names}
    if target.sub_group_size >= sum(partition.values()):
        return [names]
    sub_groups, current, size = [], [], 0
    for name in names:
        current.append(name)
        size += partition[name]
        if size >= target.sub_group_size or name == names[-1]:
            sub_groups.append(current)
            current, size = [], 0
    return sub_groups


def _zero3_piece(tensor: Tensor, rank: int, world_size: int) -> Tensor:
    """Rank ``rank``'s piece of a flat parameter-shaped tensor, padded with zeros to ceil(numel / ws)."""
    piece = math.ceil(tensor.numel() / world_size)
    part = tensor[rank * piece : (rank + 1) * piece]
    return torch.cat([part, part.new_zeros(piece - part.numel())])


def _zero3_module(cons: Consolidated) -> dict[str, Any]:
    """The module state dict as ZeRO-3 saves it: parameters (and their tied aliases) empty, buffers full."""
    module = cons.source.model_states["module"]
    if cons.source.stage == 3:
        return module
    shared = cons.source.model_states.get("shared_params") or {}
    return OrderedDict(
        (key, torch.empty(0, dtype=tensor.dtype) if shared.get(key, key) in cons.master else tensor)
        for key, tensor in module.items()
    )


# ------------------------------------------------------------------------------------------------- common
def _keys(cons: Consolidated, names: list[str]) -> list[str]:
    """The element-wise keys to partition for ``names`` (one output group): "" (the fp32 master weights)
    and the state's, which all of ``names`` must have."""
    keys = [key for key, value in cons.state[names[0]].items() if is_elementwise(value)]
    for name in names[1:]:
        if [key for key, value in cons.state[name].items() if is_elementwise(value)] != keys:
            raise CheckpointError(
                f"{name!r} and {names[0]!r} have different optimizer state keys, so they cannot share a "
                "(sub-)group in the output; keep the source's layout settings"
            )
    return ["", *keys]


def _tensor(cons: Consolidated, name: str, key: str) -> Tensor:
    return cons.master[name] if key == "" else cons.state[name][key]


def _in_order(cons: Consolidated, state: dict[str, Any]) -> dict[str, Any]:
    return {key: state[key] for key in cons.state_keys if key in state}


def _copies(values: dict[str, Any]) -> dict[str, Any]:
    return {
        key: value.clone() if torch.is_tensor(value) else copy.deepcopy(value)
        for key, value in values.items()
    }


def _loss_scaling(cons: Consolidated) -> dict[str, Any]:
    """The loss-scaling values ZeRO saves (BF16_Optimizer saves none; bf16 ZeRO's scale is a static 1)."""
    return {
        "loss_scaler": cons.globals.get("loss_scaler", LossScaler(scale=1.0)),
        "dynamic_loss_scale": cons.globals.get("dynamic_loss_scale", False),
        "overflow": cons.globals.get("overflow", False),
    }


def _model_states(
    cons: Consolidated, target: Target, module: dict[str, Any], param_shapes: list[OrderedDict]
) -> dict[str, Any]:
    """The model-states file: the source's, with the module, shapes and world size of the target."""
    states = dict(cons.source.model_states)
    frozen = OrderedDict() if target.stage >= 2 else None  # DeepSpeed saves these from stage 2 on
    states.update(
        module=module,
        param_shapes=param_shapes,
        frozen_param_shapes=frozen,
        frozen_param_fragments=copy.copy(frozen),
        dp_world_size=target.world_size,
    )
    return states
