"""Reading DeepSpeed checkpoint files without running code from them: the one allow-list of their types.

``torch.save`` files are pickles, and a full unpickling (``torch.load(weights_only=False)``) calls whatever
a file names: a checkpoint from elsewhere could run code on the reader's machine. These tools read
checkpoint files with ``weights_only=True`` instead, allowing beyond torch's tensors and containers only
the types DeepSpeed 0.19 checkpoints of WAME runs legitimately hold (:data:`TRUSTED_TYPES`, found by
scanning ZeRO-1/2/3, offload, bf16 and fp16 checkpoints). A file that names anything else is refused before
anything in it is built, with a message naming the types; ``trust=True`` (``--trust-checkpoint``) reads a
file the user trusts with full unpickling, as ``engine.load_checkpoint`` always does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from wame_dist.deepspeed._deepspeed_compat import (
    DynamicLossScaler,
    LossScaler,
    ZeroStageEnum,
    fragment_address,
)
from wame_dist.errors import BadInput

#: What DeepSpeed pickles into its checkpoint files besides tensors and plain containers: the loss scaler
#: (every engine; dynamic under fp16), the ZeRO stage enum and ZeRO-1/2's parameter fragment addresses.
#: (wame_dist's own writers, reshard and export, save only these and plain data.)
TRUSTED_TYPES = (DynamicLossScaler, LossScaler, ZeroStageEnum, fragment_address)

TRUST_FLAG = "--trust-checkpoint"


class UntrustedCheckpoint(BadInput):
    """A checkpoint file naming types outside :data:`TRUSTED_TYPES`; nothing in it was executed."""


def untrusted_types(path: str | Path) -> list[str]:
    """The types and functions the pickle of ``path`` names beyond torch's safe set and
    :data:`TRUSTED_TYPES`, sorted; found by reading the pickle's opcodes, without executing or building
    anything (nor reading tensor data)."""
    with torch.serialization.safe_globals(list(TRUSTED_TYPES)):
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))


def require_trusted(path: str | Path) -> None:
    """Raises :class:`UntrustedCheckpoint`, saying what to do, if ``path`` names an untrusted type."""
    names = untrusted_types(path)
    if names:
        raise UntrustedCheckpoint(
            f"{str(path)!r} holds {', '.join(names)}, which DeepSpeed and wame_dist checkpoints never hold; "
            "it was not loaded, since unpickling it could run code. If you trust the file (you wrote it, "
            f"with other software), pass {TRUST_FLAG} to read it with full unpickling"
        )


def load(path: str | Path, *, trust: bool = False) -> Any:
    """``torch.load(path)`` onto the CPU: with ``weights_only=True`` and :data:`TRUSTED_TYPES` after
    :func:`require_trusted`, or with full unpickling when ``trust`` is set."""
    if trust:
        return torch.load(path, map_location="cpu", weights_only=False)
    require_trusted(path)
    with torch.serialization.safe_globals(list(TRUSTED_TYPES)):
        return torch.load(path, map_location="cpu", weights_only=True)
