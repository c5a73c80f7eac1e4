"""Bridges between the two engines' checkpoints, in the layout of :mod:`wame_dist.training.checkpoints`:

* :func:`zero_to_dcp`: one tag of a ZeRO checkpoint, written as a new checkpoints folder holding that tag as
  a DCP checkpoint (with ``launch/train.py``'s client state, ``latest`` and ``COMPLETE``), which
  ``launch/train.py --engine fsdp2 --resume-from OUT_DIR`` resumes on any number of ranks;
* :func:`dcp_to_file`: one tag of an FSDP2 run's DCP checkpoints as the one file ``wame-dist export`` writes
  for ZeRO checkpoints (fp32 weights and optimizer state by parameter name, and ``meta``).

Both run in one process without a process group, only read the source and create their output atomically.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from wame_dist import atomic
from wame_dist.deepspeed._deepspeed_compat import LATEST
from wame_dist.deepspeed.checkpoint import safe_load
from wame_dist.deepspeed.checkpoint.consolidate import consolidate
from wame_dist.deepspeed.checkpoint.export import FORMAT, exported
from wame_dist.deepspeed.checkpoint.layout import CheckpointError, read_checkpoint
from wame_dist.deepspeed.checkpoint.output import fresh_path, new_directory
from wame_dist.training.checkpoints import CLIENT_STATE, COMPLETE, latest_complete

_DCP_METADATA = ".metadata"  # the file every DCP checkpoint folder has


def dcp_tag(checkpoint_dir: str | Path, tag: str | None = None) -> Path | None:
    """The DCP checkpoint folder of ``tag`` (default: the newest complete one) in ``checkpoint_dir``, or None
    if that is not a DCP checkpoint."""
    folder = Path(checkpoint_dir)
    tag = tag or (latest_complete(folder) if folder.is_dir() else None)
    path = folder / tag if tag else None
    return path if path is not None and (path / _DCP_METADATA).exists() else None


def zero_to_dcp(
    checkpoint_dir: str | Path, out: str | Path, *, tag: str | None = None, trust: bool = False
) -> dict[str, Any]:
    """Writes tag ``tag`` (default: ``latest``) of the ZeRO checkpoint in ``checkpoint_dir`` to the new folder
    ``out`` as ``out/TAG``: a DCP checkpoint of ``{"model", "optimizer"}`` as FSDP2's ``get_state_dict``
    names them, and the client state of the ZeRO checkpoint (epoch, metrics, run settings, steps) if it has
    one; returns the export's ``meta``."""
    consolidated = consolidate(read_checkpoint(checkpoint_dir, tag, trust=trust))
    payload = exported(consolidated)
    meta = payload["meta"]
    state = {
        "model": payload["model"],
        "optimizer": {"state": payload["optimizer_state"], "param_groups": meta["param_groups"]},
    }
    saved = consolidated.source.model_states
    client = {key: saved[key] for key in ("epoch", "recorder", "run") if key in saved}
    with new_directory(out) as folder:
        path = folder / meta["tag"]
        dcp.save(state, checkpoint_id=path, no_dist=True)
        if client:
            atomic.torch_save(
                {**client, "global_steps": meta["global_steps"], "world_size": meta["world_size"]},
                path / CLIENT_STATE,
            )
        atomic.write_text(path / COMPLETE, "")
        atomic.write_text(folder / LATEST, meta["tag"])
    return meta


def dcp_to_file(
    checkpoint_dir: str | Path, out: str | Path, *, tag: str | None = None, trust: bool = False
) -> dict[str, Any]:
    """Writes tag ``tag`` (default: the newest complete one) of the FSDP2 run checkpoints in
    ``checkpoint_dir`` to the new file ``out`` as ``{"model", "optimizer_state", "meta"}`` (the format of
    :func:`wame_dist.deepspeed.checkpoint.export.exported`); returns its ``meta``."""
    path = dcp_tag(checkpoint_dir, tag)
    if path is None:
        raise CheckpointError(
            f"{checkpoint_dir}: no DCP checkpoint {'tagged ' + repr(tag) if tag else 'there'} (a tag folder "
            f"with {_DCP_METADATA}); pass the checkpoints folder of an --engine fsdp2 run"
        )
    out = fresh_path(out)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        dcp_to_torch_save(path, Path(tmp) / "state.pt")
        state = safe_load.load(Path(tmp) / "state.pt", trust=trust)
    client = safe_load.load(path / CLIENT_STATE, trust=trust) if (path / CLIENT_STATE).exists() else {}
    meta = {
        "format": FORMAT,
        "source": str(path.parent.absolute()),
        "tag": path.name,
        "engine": "fsdp2",
        "world_size": client.get("world_size"),
        "global_steps": client.get("global_steps"),
        "param_groups": state["optimizer"]["param_groups"],
    }
    payload = {"model": state["model"], "optimizer_state": state["optimizer"]["state"], "meta": meta}
    atomic.torch_save(payload, out)
    return meta
