"""Epoch checkpoints that a crash cannot spoil, and resuming from the newest complete one.

The engine writes one folder per tag (``epoch0003``) from every rank: DeepSpeed's checkpoint (the client
state inside its ``*model_states.pt``), or FSDP2's DCP checkpoint with the client state beside it in
``client_state.pt``. Only after all ranks are done does rank 0 mark the folder complete and point
``latest`` at it (written atomically; the same file DeepSpeed's own ``load_checkpoint(dir)`` reads). A
crash during a save therefore leaves ``latest`` on the previous complete checkpoint. Older complete
checkpoints beyond ``keep_checkpoints`` are deleted after the new one is complete.

Resuming is exact: the data order is seeded by (seed, epoch), each sample's dropout mask by (seed, epoch,
its index in the training set), neither by the rank, and the engine restores
weights, WAME's state, loss scaler and learning-rate schedule. A checkpoint is resumed only by the engine
that wrote it, DeepSpeed's only on the world size that wrote it (DCP reshards by itself).
"""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch.distributed as dist

from wame_dist import atomic
from wame_dist.deepspeed._deepspeed_compat import LATEST
from wame_dist.deepspeed.checkpoint import safe_load
from wame_dist.deepspeed.checkpoint.layout import model_files
from wame_dist.errors import BadInput
from wame_dist.training.config import RunConfig

COMPLETE = "COMPLETE"
CLIENT_STATE = "client_state.pt"  # FSDP2's (rank 0): epoch, recorder, run settings, steps, world size

#: Settings a checkpoint must share with the run that resumes it.
_MUST_MATCH = ("data", "model", "optimizer", "seed", "precision", "batch_size", "init_weights")


def directory(run: RunConfig) -> Path:
    return Path(run.out_dir) / "checkpoints"


def save(engine, run: RunConfig, epoch: int, recorder) -> None:
    folder = directory(run)
    tag = f"epoch{epoch:04d}"
    client_state = {"epoch": epoch, "recorder": recorder.state_dict(), "run": asdict(run)}
    engine.save(folder / tag, client_state)
    dist.barrier()
    if dist.get_rank() == 0:
        atomic.write_text(folder / tag / COMPLETE, "")
        atomic.write_text(folder / LATEST, tag)
        complete = sorted(p for p in folder.glob("epoch*") if (p / COMPLETE).exists())
        for old in complete[: -run.keep_checkpoints]:
            shutil.rmtree(old)
    dist.barrier()


def latest_complete(folder: Path) -> str | None:
    """The tag ``latest`` names if that checkpoint is complete, else the newest complete one, else None."""
    pointer = folder / LATEST
    if pointer.exists():
        tag = pointer.read_text().strip()
        if (folder / tag / COMPLETE).exists() or ((folder / tag).is_dir() and not _ours(folder)):
            return tag
    complete = sorted(p.name for p in folder.glob("epoch*") if (p / COMPLETE).exists())
    return complete[-1] if complete else None


def _ours(folder: Path) -> bool:
    """Whether the folder was written by :func:`save` (others, e.g. resharded ones, carry no markers)."""
    return any((p / COMPLETE).exists() for p in folder.glob("epoch*"))


def resume(engine, run: RunConfig, recorder) -> int:
    """Loads the newest complete checkpoint of this run (or of ``--resume-from``, which must hold one), if
    any; returns the first epoch still to train."""
    own = directory(run)
    own_tag = latest_complete(own) if own.exists() else None
    folder, tag = own, own_tag
    if run.resume_from is not None and own_tag is None:  # the run's own newer checkpoints win on a restart
        folder = Path(run.resume_from)
        tag = latest_complete(folder) if folder.is_dir() else None
        if tag is None:
            raise BadInput(f"--resume-from {folder}: no complete checkpoint there (a folder with 'latest')")
    if tag is None:
        return 1
    check_compatible(folder / tag, run, dist.get_world_size())
    client_state = engine.load(folder / tag)
    recorder.load_state_dict(client_state["recorder"])
    return client_state["epoch"] + 1


def saved_state(path: Path, *, trust: bool = False) -> tuple[str, dict[str, Any]]:
    """The engine that wrote the checkpoint at ``path`` and the state saved beside the weights. Unless
    ``trust``, every ``.pt`` file there must name only the types DeepSpeed's checkpoints hold (the engine's
    ``load_checkpoint`` unpickles them fully; see :mod:`wame_dist.deepspeed.checkpoint.safe_load`)."""
    if not trust:
        for file in sorted(path.glob("*.pt")):
            safe_load.require_trusted(file)
    if (path / CLIENT_STATE).exists():
        return "fsdp2", safe_load.load(path / CLIENT_STATE, trust=trust)
    states = model_files(path) if path.is_dir() else []
    if states:
        return "deepspeed", safe_load.load(path / states[0], trust=trust)
    raise BadInput(
        f"{path} is not a checkpoint of launch/train.py (no *model_states.pt, no {CLIENT_STATE}); delete it "
        "or use another --out-dir"
    )


def check_compatible(path: Path, run: RunConfig, world_size: int) -> None:
    """Fails, saying what to do, if the checkpoint at ``path`` is another run's, engine's or world size's,
    or (unless ``run.trust_checkpoint``) holds a type DeepSpeed's checkpoints never hold: see
    :func:`saved_state`."""
    engine, saved = saved_state(path, trust=run.trust_checkpoint)
    if engine != run.engine:
        convert = (
            f", or convert it: wame-dist export {path.parent} --tag {path.name} --dcp --out NEW_DIR, then "
            "--resume-from NEW_DIR"
            if engine == "deepspeed"
            else ""
        )
        raise BadInput(
            f"the checkpoint in {path} was written by --engine {engine}, this run uses --engine "
            f"{run.engine}; resume it with --engine {engine}, or use another --out-dir{convert}"
        )
    theirs: dict[str, Any] = saved.get("run", {})
    ours = asdict(run)
    differing = [k for k in _MUST_MATCH if theirs.get(k) != ours[k]]
    if differing:
        detail = "; ".join(f"{k}: checkpoint {theirs.get(k)!r}, this run {ours[k]!r}" for k in differing)
        raise BadInput(
            f"the checkpoint in {path} was written by another run ({detail}); use another --out-dir, or "
            "delete the checkpoints to start over"
        )
    if engine == "deepspeed" and saved.get("dp_world_size", world_size) != world_size:
        raise BadInput(
            f"the checkpoint in {path} was written by {saved['dp_world_size']} ranks, this job has "
            f"{world_size}; "
            f"reshard it first: wame-dist reshard {path.parent} --tag {path.name} --world-size {world_size} "
            "--out NEW_DIR, then resume from NEW_DIR"
        )
