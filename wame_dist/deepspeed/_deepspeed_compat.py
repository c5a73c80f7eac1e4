"""DeepSpeed's private names that wame_dist depends on: the only place where it imports DeepSpeed's internal
modules or spells the names of the files in DeepSpeed's checkpoints.

None of this is DeepSpeed's public API; it is pinned to the DeepSpeed versions the project supports
(``deepspeed>=0.19,<0.20`` in pyproject.toml, tested with 0.19.8), whose ``engine.save_checkpoint`` writes
``DIR/latest`` (the last tag) and per tag folder the files named below. A DeepSpeed upgrade that moves or
renames any of it is mended here, in one file.
"""

from __future__ import annotations

import re

import torch
import torch.distributed as dist
from deepspeed.runtime import engine as _engine
from deepspeed.runtime.config import DtypeEnum
from deepspeed.runtime.constants import GRADIENT_CLIPPING_DEFAULT
from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
from deepspeed.runtime.zero import utils as _zero_utils
from deepspeed.runtime.zero.config import DeepSpeedZeroConfig, OffloadDeviceEnum, ZeroStageEnum
from deepspeed.utils.tensor_fragment import fragment_address

__all__ = [
    "BF16_PREFIX",
    "DEEPSPEED_FILES",
    "EXPERT_FILE",
    "GRADIENT_CLIPPING_DEFAULT",
    "LATEST",
    "MODEL_PARALLEL_RANK",
    "OPTIM_FILE",
    "PIPELINE_FILE",
    "Z3_MODEL_FILE",
    "Z12_MODEL_FILE",
    "Z12_MODEL_FILE_PATTERN",
    "ZERO_SUPPORTED_OPTIMIZERS",
    "DeepSpeedEngine",
    "DeepSpeedZeroConfig",
    "DtypeEnum",
    "DynamicLossScaler",
    "LossScaler",
    "OffloadDeviceEnum",
    "ZeroStageEnum",
    "fragment_address",
    "is_model_states_file",
    "optim_file",
    "partition_places",
    "zero3_model_file",
]

#: The engine class whose optimizer set-up :func:`wame_dist.deepspeed.register` patches.
DeepSpeedEngine = _engine.DeepSpeedEngine

#: The optimizer classes ZeRO takes without ``zero_allow_untested_optimizer`` (a list, extended in place).
ZERO_SUPPORTED_OPTIMIZERS = _zero_utils.ZERO_SUPPORTED_OPTIMIZERS

#: The file of a checkpoint directory naming its last tag (written by save_checkpoint, read by
#: load_checkpoint when no tag is given).
LATEST = "latest"

#: What save_checkpoint writes beside the tag folders: the tag pointers and its recovery scripts.
DEEPSPEED_FILES = (LATEST, "latest_universal", "zero_to_fp32.py", "zero_to_torch.py")

#: ZeRO-1/2: the one model-states file of a tag (the full module, data-parallel rank 0's).
Z12_MODEL_FILE = "mp_rank_00_model_states.pt"

#: The prefix of the optimizer-states files of an engine running in bf16.
BF16_PREFIX = "bf16_"


def zero3_model_file(rank: int) -> str:
    """ZeRO-3: the model-states file of data-parallel rank ``rank``."""
    return f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt"


def optim_file(rank: int, prefix: str = "") -> str:
    """The ZeRO optimizer-states file of data-parallel rank ``rank`` (``prefix``: :data:`BF16_PREFIX` or
    "")."""
    return f"{prefix}zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"


#: A ZeRO optimizer-states file; groups: the bf16 prefix, the data-parallel and the model-parallel rank.
OPTIM_FILE = re.compile(r"^(bf16_)?zero_pp_rank_(\d+)_mp_rank_(\d+)_optim_states\.pt$")
#: A ZeRO-3 model-states file; groups: the data-parallel and the model-parallel rank.
Z3_MODEL_FILE = re.compile(r"^zero_pp_rank_(\d+)_mp_rank_(\d+)_model_states\.pt$")
#: A ZeRO-1/2 model-states file (of any model-parallel rank); group: the model-parallel rank.
Z12_MODEL_FILE_PATTERN = re.compile(r"^mp_rank_(\d+)_model_states\.pt$")
#: A pipeline-parallel layer file.
PIPELINE_FILE = re.compile(r"^layer_\d+-model_\d+-model_states\.pt$")
#: A mixture-of-experts file (searched, not matched).
EXPERT_FILE = re.compile(r"^expp_rank_\d+_|(^|_)expert_\d+_")
#: The model-parallel rank of a model- or optimizer-states file (searched); group 1: the rank.
MODEL_PARALLEL_RANK = re.compile(r"mp_rank_(\d+)_(model|optim)_states\.pt$")


def is_model_states_file(name: str) -> bool:
    """Whether ``name`` is a data-parallel model-states file (ZeRO-1/2's or a ZeRO-3 rank's)."""
    return bool(Z12_MODEL_FILE_PATTERN.match(name) or Z3_MODEL_FILE.match(name))


#: The attributes holding the flat fp32 partitions that the ZeRO-1/2 optimizer (``DeepSpeedZeroOptimizer``)
#: and the bf16 ZeRO-1 optimizer (``BF16_Optimizer``) hand to their basic optimizer, one per group.
_FLAT_PARTITIONS = ("single_partition_of_fp32_groups", "fp32_groups_flat_partition")


def partition_places(zero_optimizer: object) -> dict[torch.Tensor, list[tuple[int, int, int]]]:
    """Where each flat fp32 partition a ZeRO optimizer steps sits in the whole (``WAME.place``): ``{
    partition: [(length, group index, offset), ...]}``, offsets counted in the group's parameters laid end
    to end, as ZeRO-1/2's flat buffer holds them (padded at the end only).

    ZeRO-1/2 (and bf16 ZeRO-1) cut that buffer into equal partitions: rank ``r``'s is one piece at ``r *
    partition size``. ZeRO-3 cuts each parameter: rank ``r`` holds elements ``[r * n, (r + 1) * n)`` of
    every parameter (``n``: its partition size, the last rank's padded), and a sub-group's partition is
    those pieces of its parameters laid end to end. Either way an element's place does not depend on the
    number of ranks or the stage (except under ``round_robin_gradients``, which orders ZeRO-1/2's buffer
    by rank). Empty for an engine without ZeRO."""
    for attribute in _FLAT_PARTITIONS:
        partitions = getattr(zero_optimizer, attribute, None)
        if partitions is not None:
            groups = zero_optimizer.real_dp_process_group  # type: ignore[attr-defined]
            return {
                partition: [(partition.numel(), i, dist.get_rank(group=groups[i]) * partition.numel())]
                for i, partition in enumerate(partitions)
            }
    sub_groups = getattr(zero_optimizer, "fp16_groups", None)
    flats = getattr(zero_optimizer, "fp32_partitioned_groups_flat", None)
    if sub_groups is None or flats is None:
        return {}
    places, group_offsets = {}, {}
    for i, (params, flat) in enumerate(zip(sub_groups, flats, strict=True)):
        group = zero_optimizer.sub_group_to_group_id[i]  # type: ignore[attr-defined]
        rank = dist.get_rank(group=zero_optimizer.sub_group_process_groups[i])  # type: ignore[attr-defined]
        pieces = []
        for param in params:
            start = group_offsets.get(group, 0)
            pieces.append((param.partition_numel(), group, start + rank * param.partition_numel()))
            group_offsets[group] = start + param.ds_numel
        places[flat] = pieces
    return places
