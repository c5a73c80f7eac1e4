"""DeepSpeed's private names that wame_dist depends on: the only place where it imports DeepSpeed's internal
modules or spells the names of the files in DeepSpeed's checkpoints.

None of this is DeepSpeed's public API; it is pinned to the DeepSpeed versions the project supports
(``deepspeed>=0.19,<0.20`` in pyproject.toml, tested with 0.19.8), whose ``engine.save_checkpoint`` writes
``DIR/latest`` (the last tag) and per tag folder the files named below. A DeepSpeed upgrade that moves or
renames any of it is mended here, in one file.
"""

from __future__ import annotations

import re

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
