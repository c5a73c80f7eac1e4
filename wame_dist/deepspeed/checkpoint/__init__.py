"""WAME's own DeepSpeed checkpoint tools: reshard a ZeRO checkpoint for another world size (or ZeRO stage)
and export it as one file of fp32 weights and optimizer state by parameter name.

DeepSpeed cannot do either for WAME: a ZeRO checkpoint loads only on the world size that wrote it, and its
universal-checkpoint conversion knows only Adam's state (``exp_avg``, ``exp_avg_sq``).

    wame-dist reshard CHECKPOINT_DIR [--tag TAG] --world-size M --out OUT_DIR [--stage S]
    wame-dist export CHECKPOINT_DIR [--tag TAG] --out FILE
"""

from wame_dist.deepspeed.checkpoint.consolidate import Consolidated, consolidate
from wame_dist.deepspeed.checkpoint.export import export, exported
from wame_dist.deepspeed.checkpoint.layout import Checkpoint, CheckpointError, read_checkpoint
from wame_dist.deepspeed.checkpoint.reshard import Resharded, reshard

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "Consolidated",
    "Resharded",
    "consolidate",
    "export",
    "exported",
    "read_checkpoint",
    "reshard",
]
