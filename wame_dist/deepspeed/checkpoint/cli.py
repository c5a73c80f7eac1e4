"""The ``wame-dist reshard`` and ``wame-dist export`` commands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from wame_dist.deepspeed.checkpoint.export import export
from wame_dist.deepspeed.checkpoint.layout import CheckpointError
from wame_dist.deepspeed.checkpoint.reshard import reshard
from wame_dist.deepspeed.checkpoint.safe_load import TRUST_FLAG
from wame_dist.training import dcp_bridge

_CHECKPOINT_HELP = "the directory given to engine.save_checkpoint (holding 'latest' and the tag folders)"
_TAG_HELP = "the checkpoint tag to read (default: the one named in CHECKPOINT_DIR/latest)"
_TRUST_HELP = (
    "read the checkpoint with full unpickling, which can run code from it; only for files you trust that "
    "hold types DeepSpeed's checkpoints do not (by default they are refused)"
)


def reshard_parser() -> argparse.ArgumentParser:
    """The argument parser of ``wame-dist reshard``."""
    parser = argparse.ArgumentParser(
        prog="wame-dist reshard",
        description="Rewrite a DeepSpeed ZeRO-1/2/3 checkpoint (rigid format; WAME, or any optimizer whose "
        "state is element-wise) for another data-parallel world size, optionally another ZeRO stage, so that "
        "engine.load_checkpoint(OUT_DIR) loads it natively there. Files a host keeps beside DeepSpeed's (HF "
        "Trainer's trainer_state.json, RNG states...) are copied unchanged. The source is only read.",
    )
    parser.add_argument("checkpoint_dir", metavar="CHECKPOINT_DIR", help=_CHECKPOINT_HELP)
    parser.add_argument("--tag", help=_TAG_HELP)
    parser.add_argument("--world-size", type=int, required=True, help="data-parallel ranks that will load it")
    parser.add_argument(
        "--out", required=True, metavar="OUT_DIR", help="new checkpoint directory to create (must not exist)"
    )
    parser.add_argument(
        "--stage", type=int, choices=(1, 2, 3), help="ZeRO stage that will load it (default: the source's)"
    )
    parser.add_argument(
        "--sub-group-size",
        type=int,
        help="zero_optimization.sub_group_size of the ZeRO-3 engine that will load it (default: the source "
        "config's, or DeepSpeed's default)",
    )
    parser.add_argument(TRUST_FLAG, action="store_true", help=_TRUST_HELP)
    return parser


def export_parser() -> argparse.ArgumentParser:
    """The argument parser of ``wame-dist export``."""
    parser = argparse.ArgumentParser(
        prog="wame-dist export",
        description="Write a DeepSpeed ZeRO-1/2/3 checkpoint, or an FSDP2 run's DCP checkpoint "
        "(launch/train.py --engine fsdp2), as one torch.save file: {'model': fp32 state dict, "
        "'optimizer_state': {parameter name: {state key: tensor shaped like the parameter, 'step': ...}}, "
        "'meta': {...}}; with --dcp, a ZeRO checkpoint as a DCP checkpoints folder that launch/train.py "
        "--engine fsdp2 --resume-from OUT resumes. The source is only read.",
    )
    parser.add_argument("checkpoint_dir", metavar="CHECKPOINT_DIR", help=_CHECKPOINT_HELP)
    parser.add_argument("--tag", help=_TAG_HELP)
    parser.add_argument("--out", required=True, metavar="FILE", help="file (with --dcp: folder) to create")
    parser.add_argument("--dcp", action="store_true", help="write a ZeRO checkpoint as a DCP checkpoint")
    parser.add_argument(
        "--state-fp32",
        action="store_true",
        help="write WAME's bfloat16 state (state_dtype='bf16') as float32 (exact); file export of ZeRO only",
    )
    parser.add_argument(TRUST_FLAG, action="store_true", help=_TRUST_HELP)
    return parser


def reshard_main(argv: Sequence[str] | None = None) -> int:
    """Runs ``wame-dist reshard``: 0 when written; bad arguments exit 2 here, a checkpoint that cannot be
    resharded raises :class:`CheckpointError` (bad input: the dispatcher prints it and exits 2)."""
    parser = reshard_parser()
    args = _parse(parser, argv)
    if isinstance(args, int):
        return args
    if args.world_size < 1:
        return _usage_error(parser, f"--world-size must be at least 1, not {args.world_size}")
    if args.sub_group_size is not None and args.sub_group_size < 1:
        return _usage_error(parser, f"--sub-group-size must be at least 1, not {args.sub_group_size}")
    done = reshard(
        args.checkpoint_dir,
        args.out,
        args.world_size,
        tag=args.tag,
        stage=args.stage,
        sub_group_size=args.sub_group_size,
        trust=args.trust_checkpoint,
    )
    host = ", ".join(path.name for path in done.host_files)
    print(
        f"resharded tag {done.tag!r}: ZeRO-{done.source_stage} on {done.source_world_size} ranks -> "
        f"ZeRO-{done.target.stage} on {done.target.world_size} ranks in {done.out}"
        + (f", with the host's files {host}" if host else "")
    )
    return 0


def export_main(argv: Sequence[str] | None = None) -> int:
    """Runs ``wame-dist export``: 0 when written; bad arguments exit 2 here, a checkpoint that cannot be
    exported raises :class:`CheckpointError` (bad input: the dispatcher prints it and exits 2)."""
    parser = export_parser()
    args = _parse(parser, argv)
    if isinstance(args, int):
        return args
    if args.state_fp32 and args.dcp:
        return _usage_error(parser, "--state-fp32 writes a file; a DCP checkpoint keeps the state as stored")
    from_dcp = dcp_bridge.dcp_tag(args.checkpoint_dir, args.tag) is not None
    if args.dcp and from_dcp:
        raise CheckpointError(f"{args.checkpoint_dir} is already a DCP checkpoint; drop --dcp")
    if args.state_fp32 and from_dcp:
        raise CheckpointError(
            f"{args.checkpoint_dir} is an FSDP2 (DCP) checkpoint; --state-fp32 is for ZeRO's"
        )
    if args.dcp or from_dcp:
        write = dcp_bridge.zero_to_dcp if args.dcp else dcp_bridge.dcp_to_file
        meta = write(args.checkpoint_dir, args.out, tag=args.tag, trust=args.trust_checkpoint)
    else:
        meta = export(
            args.checkpoint_dir,
            args.out,
            tag=args.tag,
            trust=args.trust_checkpoint,
            state_fp32=args.state_fp32,
        )
    source = "FSDP2 (DCP)" if from_dcp else f"ZeRO-{meta['zero_stage']}"
    print(
        f"exported tag {meta['tag']!r} ({source} on {meta['world_size']} ranks, {len(meta['param_groups'])} "
        f"parameter group(s), step {meta['global_steps']}) to {args.out}{' as DCP' if args.dcp else ''}"
    )
    return 0


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace | int:
    """The parsed arguments, or the exit status argparse chose (--help: 0, a usage error: 2)."""
    try:
        return parser.parse_args(argv)
    except SystemExit as exit:
        return exit.code if isinstance(exit.code, int) else 2


def _usage_error(parser: argparse.ArgumentParser, message: str) -> int:
    parser.print_usage(sys.stderr)
    print(f"{parser.prog}: error: {message}", file=sys.stderr)
    return 2
