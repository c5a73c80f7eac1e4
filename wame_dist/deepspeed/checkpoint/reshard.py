"""Resharding: a ZeRO checkpoint written on N ranks rewritten for M ranks (and optionally another stage)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from wame_dist.deepspeed._deepspeed_compat import LATEST
from wame_dist.deepspeed.checkpoint.consolidate import consolidate
from wame_dist.deepspeed.checkpoint.layout import CheckpointError, host_entries, read_checkpoint, resolve_tag
from wame_dist.deepspeed.checkpoint.output import new_directory
from wame_dist.deepspeed.checkpoint.partition import Target, target_for, write_checkpoint


@dataclass
class Resharded:
    """What :func:`reshard` wrote."""

    out: Path  #: the new checkpoint directory (``latest`` and the tag folder)
    tag: str
    source_stage: int
    source_world_size: int
    target: Target
    files: list[Path]  #: the files of the tag folder, at their final place
    host_files: list[Path]  #: the host's files and folders copied from the source, at their final place


def reshard(
    checkpoint_dir: str | Path,
    out: str | Path,
    world_size: int,
    *,
    tag: str | None = None,
    stage: int | None = None,
    sub_group_size: int | None = None,
    trust: bool = False,
) -> Resharded:
    """Rewrites tag ``tag`` (default: the one in ``latest``) of the ZeRO checkpoint in ``checkpoint_dir`` for
    an engine of ``world_size`` data-parallel ranks (and ZeRO ``stage``, default the source's; ZeRO-3
    ``sub_group_size``, default the source config's) into the new directory ``out``, with ``latest`` naming
    the same tag; ``engine.load_checkpoint(out)`` then loads it natively. Every other file and folder of
    ``checkpoint_dir`` that DeepSpeed did not write (:func:`host_entries`: HF Trainer's trainer state, RNG
    states...) is copied unchanged, so that the host resumes from ``out`` too. The source is only read;
    ``out`` appears, complete, only at the end. ``trust``: read the source with full unpickling
    (:mod:`.safe_load`)."""
    if not isinstance(world_size, int) or world_size < 1:
        raise CheckpointError(f"the world size must be a whole number of at least 1, not {world_size!r}")
    if stage not in (None, 1, 2, 3):
        raise CheckpointError(f"the ZeRO stage must be 1, 2 or 3, not {stage!r}")
    if sub_group_size is not None and sub_group_size < 1:
        raise CheckpointError(f"the ZeRO-3 sub-group size must be at least 1, not {sub_group_size!r}")
    root, tag = resolve_tag(checkpoint_dir, tag)
    out = Path(out).absolute()
    if out == root.absolute() or root.absolute() in out.parents:
        raise CheckpointError(
            f"the output {str(out)!r} lies inside the source checkpoint {str(root)!r}, which is never "
            "modified; choose an output outside it"
        )
    cons = consolidate(read_checkpoint(root, tag, trust=trust))
    target = target_for(cons, world_size, stage, sub_group_size)
    with new_directory(out) as temporary:
        (temporary / tag).mkdir()
        files = write_checkpoint(cons, target, temporary / tag)
        host = host_entries(root)
        for path in host:
            (shutil.copytree if path.is_dir() else shutil.copy2)(path, temporary / path.name)
        (temporary / LATEST).write_text(tag)  # last: a leftover of a killed run has no "latest"
    return Resharded(
        out=out,
        tag=tag,
        source_stage=cons.source.stage,
        source_world_size=cons.source.world_size,
        target=target,
        files=[out / tag / path.name for path in files],
        host_files=[out / path.name for path in host],
    )
