"""Reading a DeepSpeed ZeRO checkpoint from disk and checking that these tools can handle it.

A checkpoint directory is what ``engine.save_checkpoint(DIR, tag=TAG)`` writes: ``DIR/latest`` (the last
tag) and one folder per tag. These tools read the rigid (non-elastic) ZeRO-1/2/3 format of DeepSpeed 0.19
for one data-parallel group (no tensor, pipeline or expert parallelism, no frozen parameters):

* ZeRO-1/2: ``mp_rank_00_model_states.pt`` (the full module, ``param_shapes`` per parameter group in flat
  order) and one ``[bf16_]zero_pp_rank_{r}_mp_rank_00_optim_states.pt`` per rank holding that rank's slice
  of every flattened group. The optimizer is DeepSpeed's ZeRO optimizer, or its ``BF16_Optimizer`` for
  bf16 ZeRO-1 with fp32 gradient accumulation (same partitioning, fewer keys: the "bf16_optimizer" flavor).
* ZeRO-3: ``zero_pp_rank_{r}_mp_rank_00_model_states.pt`` (empty module tensors, ``param_shapes`` per
  sub-group) and ``[bf16_]zero_pp_rank_{r}_mp_rank_00_optim_states.pt`` per rank holding the rank's piece
  of every parameter.

Anything else ends in a :class:`CheckpointError` whose message says what was found and what to do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wame_dist.deepspeed import _deepspeed_compat as ds_names
from wame_dist.deepspeed._deepspeed_compat import DeepSpeedZeroConfig
from wame_dist.deepspeed.checkpoint import safe_load
from wame_dist.errors import BadInput

ZERO_FLAVOR = "zero"
BF16_OPTIMIZER_FLAVOR = "bf16_optimizer"


class CheckpointError(BadInput):
    """A checkpoint these tools cannot read or write; the message says why and what to do."""


@dataclass
class Checkpoint:
    """One tag of a ZeRO checkpoint, loaded: the rank-0 model states and every rank's optimizer states."""

    root: Path  #: the directory given to ``save_checkpoint``
    tag: str
    stage: int  #: 1, 2 or 3
    flavor: str  #: ZERO_FLAVOR, or BF16_OPTIMIZER_FLAVOR (ZeRO-1 under DeepSpeed's BF16_Optimizer)
    world_size: int  #: data-parallel ranks that wrote it
    prefix: str  #: BF16_PREFIX ("bf16_") when the engine ran in bf16, else ""
    model_states: dict[str, Any]  #: rank 0's model states (ZeRO-3: every rank's are alike)
    optim_states: list[dict[str, Any]]  #: per rank: ``optimizer_state_dict`` of its optim-states file
    optim_file: dict[str, Any]  #: rank 0's optim-states file less ``optimizer_state_dict`` (ds_config...)
    ds_config: dict[str, Any]  #: the config the engine ran with, as saved (``{}`` when not saved as a dict)
    zero_config: DeepSpeedZeroConfig  #: its ``zero_optimization`` block with DeepSpeed's defaults filled in

    @property
    def folder(self) -> Path:
        """The tag folder holding the files."""
        return self.root / self.tag


def resolve_tag(root: str | Path, tag: str | None = None) -> tuple[Path, str]:
    """The checkpoint directory and the tag to read: ``tag``, or the one named in ``root/latest``."""
    root = Path(root)
    if not root.is_dir():
        raise CheckpointError(
            f"checkpoint directory {str(root)!r} does not exist; pass the directory given to "
            "engine.save_checkpoint (the one holding 'latest' and the tag folders)"
        )
    if tag is None:
        latest = root / ds_names.LATEST
        if not latest.is_file():
            if model_files(root):
                raise CheckpointError(
                    f"{str(root)!r} is a tag folder, not a checkpoint directory; pass its parent "
                    f"{str(root.parent)!r} with --tag {root.name}"
                )
            raise CheckpointError(
                f"no 'latest' file in {str(root)!r}, so the tag to read is unknown; pass --tag TAG "
                f"(tag folders here: {_tags(root) or 'none'})"
            )
        tag = latest.read_text().strip()
    if not (root / tag).is_dir():
        raise CheckpointError(
            f"checkpoint tag {tag!r} has no folder in {str(root)!r}; tag folders here: "
            f"{_tags(root) or 'none'}"
        )
    return root, tag


def host_entries(root: Path) -> list[Path]:
    """The files and folders of checkpoint directory ``root`` that DeepSpeed did not write (not a tag folder,
    nor one of ``DEEPSPEED_FILES``): what the host saved beside DeepSpeed's checkpoint (HF Trainer's
    ``trainer_state.json``, ``training_args.bin``, ``rng_state_{rank}.pth``; Accelerate's
    ``random_states_{rank}.pkl``...)."""
    return sorted(
        path
        for path in root.iterdir()
        if path.name not in ds_names.DEEPSPEED_FILES and not (path.is_dir() and model_files(path))
    )


def read_checkpoint(root: str | Path, tag: str | None = None, *, trust: bool = False) -> Checkpoint:
    """Loads one tag of a ZeRO checkpoint and checks that it is a layout these tools handle. Its files are
    read without running code from them unless ``trust`` is set (:mod:`.safe_load`)."""
    root, tag = resolve_tag(root, tag)
    folder = root / tag
    names = sorted(path.name for path in folder.iterdir())
    _refuse_unsupported_files(folder, names)
    optim_files = {m.group(2): m for m in map(ds_names.OPTIM_FILE.match, names) if m}
    if not model_files(folder):
        raise CheckpointError(
            f"{str(folder)!r} holds no DeepSpeed model states ({ds_names.Z12_MODEL_FILE} or "
            f"{ds_names.zero3_model_file(0)}): not a DeepSpeed checkpoint"
        )
    if not optim_files:
        raise CheckpointError(
            f"{str(folder)!r} holds no ZeRO optimizer states (*zero_pp_rank_*_optim_states.pt): it was not "
            "written under ZeRO stage 1, 2 or 3, and DeepSpeed loads such checkpoints on any world size as "
            "they are"
        )
    prefixes = {m.group(1) or "" for m in optim_files.values()}
    if len(prefixes) > 1:
        raise CheckpointError(
            f"{str(folder)!r} mixes bf16_ and plain ZeRO optimizer files; it holds two checkpoints in one "
            "folder: remove the stale set"
        )
    stage3 = (folder / ds_names.zero3_model_file(0)).is_file()
    model_file = folder / (ds_names.zero3_model_file(0) if stage3 else ds_names.Z12_MODEL_FILE)
    model_states = _load(model_file, trust)
    _check_model_states(model_file, model_states)
    world_size = model_states["dp_world_size"]
    ranks = sorted(int(rank) for rank in optim_files)
    if ranks != list(range(world_size)):
        raise CheckpointError(
            f"{str(folder)!r} was written by {world_size} data-parallel ranks but holds optimizer files of "
            f"ranks {ranks}; the checkpoint is incomplete (copy every rank's file)"
        )
    prefix = prefixes.pop()
    if stage3:
        missing = [r for r in range(world_size) if ds_names.zero3_model_file(r) not in names]
        if missing:
            raise CheckpointError(f"{str(folder)!r} lacks the ZeRO-3 model states of ranks {missing}")
    files = [_load(folder / ds_names.optim_file(r, prefix), trust) for r in range(world_size)]
    optim_states = [file.get("optimizer_state_dict") for file in files]
    stage, flavor = _stage_and_flavor(folder, optim_states, stage3)
    _check_partition_count(folder, optim_states, world_size)
    ds_config = _config_dict(files[0].get("ds_config", model_states.get("ds_config")))
    return Checkpoint(
        root=root,
        tag=tag,
        stage=stage,
        flavor=flavor,
        world_size=world_size,
        prefix=prefix,
        model_states=model_states,
        optim_states=optim_states,
        optim_file={key: value for key, value in files[0].items() if key != "optimizer_state_dict"},
        ds_config=ds_config,
        zero_config=DeepSpeedZeroConfig(**ds_config.get("zero_optimization", {})),
    )


def _load(path: Path, trust: bool) -> dict[str, Any]:
    try:
        loaded = safe_load.load(path, trust=trust)
    except safe_load.UntrustedCheckpoint as error:
        raise CheckpointError(str(error)) from None
    except Exception as error:
        raise CheckpointError(f"cannot read {str(path)!r} ({type(error).__name__}: {error})") from None
    if not isinstance(loaded, dict):
        raise CheckpointError(f"{str(path)!r} holds a {type(loaded).__name__}, not a DeepSpeed state dict")
    return loaded


def model_files(folder: Path) -> list[str]:
    """The names of the DeepSpeed model-states files in tag folder ``folder`` (ZeRO-1/2's, or every ZeRO-3
    rank's), sorted; empty when ``folder`` holds no DeepSpeed checkpoint."""
    return sorted(p.name for p in folder.iterdir() if ds_names.is_model_states_file(p.name))


def _tags(root: Path) -> str:
    return ", ".join(sorted(p.name for p in root.iterdir() if p.is_dir() and model_files(p)))


def _refuse_unsupported_files(folder: Path, names: list[str]) -> None:
    if (folder / "zero").is_dir():
        raise CheckpointError(
            f"{str(folder)!r} is a DeepSpeed universal checkpoint (zero/), not a ZeRO checkpoint; "
            "DeepSpeed's conversion to it keeps only Adam's state (exp_avg, exp_avg_sq), so reshard or "
            "export the ZeRO checkpoint it was made from instead"
        )
    if (folder / "offloaded_tensors").exists():
        raise CheckpointError(
            f"{str(folder)!r} holds NVMe-offloaded optimizer state (offloaded_tensors/), which these tools "
            "do not read; save with offload_optimizer device 'cpu' or 'none' to reshard or export"
        )
    if any(ds_names.PIPELINE_FILE.match(name) for name in names):
        raise CheckpointError(
            f"{str(folder)!r} is a pipeline-parallel checkpoint (layer_*-model_states.pt); only pure "
            "data-parallel ZeRO checkpoints can be resharded or exported"
        )
    if any(ds_names.EXPERT_FILE.search(name) for name in names):
        raise CheckpointError(
            f"{str(folder)!r} holds mixture-of-experts files (expert / expp_rank_*); MoE checkpoints are not "
            "supported: only pure data-parallel ZeRO checkpoints can be resharded or exported"
        )
    model_parallel = {m.group(1) for name in names if (m := ds_names.MODEL_PARALLEL_RANK.search(name))}
    if model_parallel - {"00"}:
        raise CheckpointError(
            f"{str(folder)!r} holds files of model-parallel ranks {sorted(model_parallel)}: tensor-parallel "
            "checkpoints are not supported, only pure data-parallel ZeRO checkpoints"
        )


def _check_model_states(path: Path, states: dict[str, Any]) -> None:
    missing = [key for key in ("module", "param_shapes", "dp_world_size") if key not in states]
    if missing:
        raise CheckpointError(f"{str(path)!r} lacks {missing}: not a DeepSpeed ZeRO checkpoint")
    dims = states.get("checkpoint_parallel_dimensions") or {}
    if states.get("mp_world_size", 1) != 1 or dims.get("tp_degree", 1) != 1 or dims.get("pp_degree", 1) != 1:
        raise CheckpointError(
            f"{str(path)!r} was written with tensor or pipeline parallelism (mp_world_size "
            f"{states.get('mp_world_size')}, {dims}); only pure data-parallel ZeRO checkpoints are supported"
        )
    if "num_experts" in states or states.get("autoep_layers") or states.get("ds_autoep_layers"):
        raise CheckpointError(f"{str(path)!r} is a mixture-of-experts checkpoint; MoE is not supported")
    if states.get("frozen_param_shapes"):
        raise CheckpointError(_frozen_message(path, list(states["frozen_param_shapes"])))
    optimized = {name for shapes in states["param_shapes"] for name in shapes}
    other = set(states.get("buffer_names") or ()) | set(states.get("shared_params") or {})
    frozen = [name for name in states["module"] if name not in optimized and name not in other]
    if frozen:
        raise CheckpointError(_frozen_message(path, frozen))
    world_size = states["dp_world_size"]
    if not isinstance(world_size, int) or world_size < 1:
        raise CheckpointError(f"{str(path)!r} records a data-parallel world size of {world_size!r}")


def _frozen_message(path: Path, names: list[str]) -> str:
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    return (
        f"{str(path)!r} has frozen (requires_grad=False) parameters ({shown}); checkpoints with frozen "
        "parameters are not supported: unfreeze them (or save them separately) before saving"
    )


def _stage_and_flavor(folder: Path, optim_states: list[Any], stage3: bool) -> tuple[int, str]:
    first = optim_states[0]
    if not isinstance(first, dict) or not all(isinstance(sd, dict) for sd in optim_states):
        raise CheckpointError(f"{str(folder)!r}: an optimizer file lacks 'optimizer_state_dict'")
    version = first.get("ds_version", "unknown")
    if "zero_stage" in first:
        stage, flavor = int(first["zero_stage"]), ZERO_FLAVOR
    elif "base_optimizer_state" in first:
        stage, flavor = 1, BF16_OPTIMIZER_FLAVOR
    else:
        raise CheckpointError(
            f"unknown ZeRO optimizer layout in {str(folder)!r} (keys {sorted(first)}); these tools read "
            "DeepSpeed 0.19 ZeRO-1/2/3 checkpoints"
        )
    if (stage == 3) != stage3 or stage not in (1, 2, 3):
        raise CheckpointError(
            f"{str(folder)!r}: the optimizer files say ZeRO stage {stage} but the model states are those of "
            f"{'stage 3' if stage3 else 'stage 1/2'}; the folder mixes two checkpoints"
        )
    if stage < 3 and isinstance(first["base_optimizer_state"], list):
        raise CheckpointError(
            f"{str(folder)!r} is an elastic ZeRO checkpoint (zero_optimization.elastic_checkpoint: true), "
            "which cannot carry WAME's state; save with elastic_checkpoint false (the default) to reshard or "
            "export"
        )
    required = (
        ("optimizer_state_dict", "fp32_flat_groups", "partition_count")
        if stage == 3
        else ("base_optimizer_state", "single_partition_of_fp32_groups", "group_paddings")
    )
    for rank, sd in enumerate(optim_states):
        missing = [key for key in required if key not in sd]
        if missing:
            raise CheckpointError(
                f"unknown ZeRO-{stage} layout in {str(folder)!r}: rank {rank}'s optimizer state lacks "
                f"{missing} (written by DeepSpeed {version}; these tools read DeepSpeed 0.19 checkpoints)"
            )
    if stage == 3 and first.get("ds_zero_partition_groups"):
        raise CheckpointError(
            f"{str(folder)!r} has expert-parallel ZeRO-3 partition groups; MoE is not supported"
        )
    return stage, flavor


def _check_partition_count(folder: Path, optim_states: list[dict[str, Any]], world_size: int) -> None:
    """The optimizer state must be partitioned over the whole data-parallel group (not over ZeRO++ or MiCS
    sub-groups of it)."""
    for rank, sd in enumerate(optim_states):
        counts = sd.get("partition_count", world_size)
        if any(count != world_size for count in (counts if isinstance(counts, list) else [counts])):
            raise CheckpointError(
                f"{str(folder)!r}: rank {rank}'s optimizer state is partitioned over {counts} ranks, not the "
                f"{world_size} data-parallel ranks (hierarchical ZeRO++ / MiCS partitioning?); only state "
                "partitioned over the whole data-parallel group is supported"
            )


def _config_dict(config: Any) -> dict[str, Any]:
    """The saved engine config as a dict (DeepSpeed saves what it was given: a dict or a JSON file's
    path)."""
    if isinstance(config, dict):
        return config
    if isinstance(config, str) and Path(config).is_file():
        loaded = json.loads(Path(config).read_text())
        if isinstance(loaded, dict):
            return loaded
    return {}
