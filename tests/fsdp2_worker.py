"""WAME under PyTorch's own sharding, FSDP2 (``fully_shard``), for the tests:

    torchrun --nproc_per_node N tests/fsdp2_worker.py OUT_DIR                       # equivalence
    torchrun --nproc_per_node N tests/fsdp2_worker.py OUT_DIR --dcp [--resume DIR]  # DCP checkpoints

Every implementation (the default, single-tensor, multi-tensor, fused) trains tests/ds_worker.py's smooth
network on the same global batches as its single-process reference, each rank on its contiguous part of
each batch (FSDP2 averages the ranks' gradients); a last run uses ``MixedPrecisionPolicy(param_dtype=bf16,
reduce_dtype=fp32)``. Rank 0 writes each run's full parameters, full state and state dtypes to
``OUT_DIR/<name>.pt``; and what the first step of a WAME built before ``fully_shard`` raises to
``OUT_DIR/built_before_sharding.txt``.

With ``--dcp`` (torch.distributed.checkpoint): without ``--resume``, train 10 steps, save a DCP checkpoint
(``OUT_DIR/ckpt``), train 10 more (``uninterrupted``); then a fresh model and WAME take the checkpoint
(``get_state_dict`` first, whose initialisation step must change nothing: ``fresh_after_init``), and train
the same 10 steps (``resumed``). With ``--resume DIR``: take DIR's checkpoint on this world size, save it
again as ``OUT_DIR/ckpt`` (the next hop's source) and train the last 10 steps (``resumed``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from ds_worker import LR, STATE_KEYS, data, global_batches, make_model
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from wame_dist import WAME

STEPS = 20
IMPLEMENTATIONS = {
    "default": {},
    "single": {"foreach": False, "fused": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
}


def full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def sharded_model(mp_policy: MixedPrecisionPolicy | None = None) -> torch.nn.Module:
    model = make_model()
    options = {"mp_policy": mp_policy} if mp_policy else {}
    for layer in model:
        if any(True for _ in layer.parameters()):
            fully_shard(layer, **options)
    return fully_shard(model, **options)


def run_steps(model, optimizer, batches) -> list[float]:
    rank, world = dist.get_rank(), dist.get_world_size()
    images, labels = data()
    losses = []
    for idx in batches:
        mine = idx.chunk(world)[rank]
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(images[mine]).float(), labels[mine])
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def record(out: Path, name: str, model, optimizer, losses: list[float]) -> None:
    """Writes (rank 0) the full parameters and state, gathered from the shards."""
    states = {n: optimizer.state[p] for n, p in model.named_parameters()}
    result = {
        "params": {n: full(p.detach()) for n, p in model.named_parameters()},
        "state": {n: {k: full(s[k]) for k in STATE_KEYS} for n, s in states.items()},
        "state_is_dtensor": all(isinstance(s[k], DTensor) for s in states.values() for k in STATE_KEYS),
        "dtypes": {n: {k: s[k].dtype for k in STATE_KEYS} for n, s in states.items()},
        "wame_steps": sorted({int(s["step"]) for s in states.values()}),
        "losses": losses,
    }
    if dist.get_rank() == 0:
        torch.save(result, out / f"{name}.pt")


def train(out: Path, name: str, flags: dict, mp_policy: MixedPrecisionPolicy | None = None) -> None:
    model = sharded_model(mp_policy)
    optimizer = WAME(model.parameters(), lr=LR, **flags)
    record(out, name, model, optimizer, run_steps(model, optimizer, global_batches(STEPS)))


def built_before_sharding(out: Path) -> None:
    """WAME built on the plain network, then ``fully_shard``: rank 0 writes what its first step raises."""
    model = make_model()
    optimizer = WAME(model.parameters(), lr=LR)
    for layer in model:
        if any(True for _ in layer.parameters()):
            fully_shard(layer)
    fully_shard(model)
    try:
        run_steps(model, optimizer, global_batches(1))
        raised = None
    except RuntimeError as error:
        raised = str(error)
    if dist.get_rank() == 0:
        (out / "built_before_sharding.txt").write_text(repr(raised))


def save(model, optimizer, checkpoint: Path) -> None:
    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=checkpoint)


def load(checkpoint: Path, out: Path | None = None):
    """A fresh sharded model and WAME holding ``checkpoint``; with ``out``, also records the fresh state as
    ``get_state_dict`` leaves it (DCP's initialisation step)."""
    model = sharded_model()
    optimizer = WAME(model.parameters(), lr=LR)
    model_state, optimizer_state = get_state_dict(model, optimizer)
    if out is not None:
        record(out, "fresh_after_init", model, optimizer, [])
    state = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=checkpoint)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    return model, optimizer


def checkpoints(out: Path, resume: Path | None) -> None:
    first, last = global_batches(STEPS)[: STEPS // 2], global_batches(STEPS)[STEPS // 2 :]
    if resume is None:
        model = sharded_model()
        optimizer = WAME(model.parameters(), lr=LR)
        losses = run_steps(model, optimizer, first)
        save(model, optimizer, out / "ckpt")
        losses += run_steps(model, optimizer, last)
        record(out, "uninterrupted", model, optimizer, losses)
        model, optimizer = load(out / "ckpt", out)
    else:
        model, optimizer = load(resume / "ckpt")
        save(model, optimizer, out / "ckpt")
    record(out, "resumed", model, optimizer, run_steps(model, optimizer, last))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", action="store_true", help="every implementation, bf16, misuse")
    parser.add_argument("--dcp", action="store_true", help="DCP checkpoints: save, or load --resume")
    parser.add_argument("--resume", type=Path, default=None)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    if args.train:
        for name, flags in IMPLEMENTATIONS.items():
            train(args.out, name, flags)
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        train(args.out, "bf16", {}, policy)
        built_before_sharding(args.out)
    if args.dcp:
        checkpoints(args.out, args.resume)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
