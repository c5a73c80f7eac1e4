"""Exporting a ZeRO checkpoint as one file: the fp32 model state dict and WAME's state by parameter name."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from wame_dist import atomic
from wame_dist.deepspeed.checkpoint.consolidate import Consolidated, consolidate, is_elementwise
from wame_dist.deepspeed.checkpoint.layout import read_checkpoint
from wame_dist.deepspeed.checkpoint.output import fresh_path

FORMAT = "wame-dist-export/1"


def export(
    checkpoint_dir: str | Path,
    out: str | Path,
    *,
    tag: str | None = None,
    trust: bool = False,
    state_fp32: bool = False,
) -> dict[str, Any]:
    """Writes tag ``tag`` (default: the one in ``latest``) of the ZeRO checkpoint in ``checkpoint_dir`` to the
    new file ``out`` with ``torch.save``, atomically (see :func:`exported` for its contents); returns its
    ``meta``. ``trust``: read the source with full unpickling (:mod:`.safe_load`); ``state_fp32``: see
    :func:`exported`."""
    out = fresh_path(out)
    payload = exported(consolidate(read_checkpoint(checkpoint_dir, tag, trust=trust)), state_fp32=state_fp32)
    atomic.torch_save(payload, out)
    return payload["meta"]


def exported(cons: Consolidated, *, state_fp32: bool = False) -> dict[str, Any]:
    """``{"model", "optimizer_state", "meta"}``:

    * ``model``: the module's state dict with every parameter (tied aliases included) as its fp32 master
      weight shaped like the parameter; buffers as saved;
    * ``optimizer_state``: per optimized parameter, each element-wise state tensor shaped like the parameter
      in its saved dtype (WAME: ``prev_sign`` int8, ``zeta``, ``z``, ``theta`` in float32, or bfloat16 for
      ``state_dtype="bf16"``), or with ``state_fp32`` every bfloat16 state as float32 (exact), and the
      per-group values as saved (WAME: 0-dim ``step``);
    * ``meta``: where it came from and what training state goes with it (steps, parameter groups with
      their settings and parameter names, loss scale, learning-rate scheduler state, ...).
    """
    source = cons.source
    states = source.model_states
    shared = states.get("shared_params") or {}
    model = OrderedDict()
    for key, tensor in states["module"].items():
        name = shared.get(key, key)
        model[key] = cons.master[name].view(cons.shapes[name]).clone() if name in cons.master else tensor
    optimizer_state = {
        name: {
            key: _as_exported(value.view(cons.shapes[name]), state_fp32) if is_elementwise(value) else value
            for key, value in cons.state[name].items()
        }
        for name in cons.shapes
    }
    scaler = cons.globals.get("loss_scaler")
    meta = {
        "format": FORMAT,
        "source": str(source.folder.absolute()),
        "tag": source.tag,
        "zero_stage": source.stage,
        "world_size": source.world_size,
        "param_dtype": str(cons.param_dtype).removeprefix("torch."),
        "state_fp32": state_fp32,
        "global_steps": states.get("global_steps"),
        "global_samples": states.get("global_samples"),
        "skipped_steps": states.get("skipped_steps"),
        "param_groups": [{**group.hyperparameters, "params": list(group.names)} for group in cons.groups],
        "shared_params": dict(shared),
        "buffer_names": list(states.get("buffer_names") or ()),
        "loss_scale": getattr(scaler, "cur_scale", None),
        "lr_scheduler": states.get("lr_scheduler"),
        "ds_config": source.ds_config,
        "ds_version": source.optim_file.get("ds_version", states.get("ds_version")),
    }
    return {"model": model, "optimizer_state": optimizer_state, "meta": meta}


def _as_exported(tensor: torch.Tensor, state_fp32: bool) -> torch.Tensor:
    """A state tensor as the export holds it: as saved, or bfloat16 widened to float32 with ``state_fp32``."""
    return tensor.float() if state_fp32 and tensor.dtype == torch.bfloat16 else tensor
