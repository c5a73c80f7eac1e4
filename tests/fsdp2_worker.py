"""WAME under PyTorch's own sharding, FSDP2 (``fully_shard``), for the tests:

    torchrun --nproc_per_node N tests/fsdp2_worker.py OUT_DIR

Every implementation (the default, single-tensor, multi-tensor, fused) trains tests/ds_worker.py's smooth
network on the same global batches as its single-process reference, each rank on its contiguous part of
each batch (FSDP2 averages the ranks' gradients); a last run uses ``MixedPrecisionPolicy(param_dtype=bf16,
reduce_dtype=fp32)``. Rank 0 writes each run's full parameters, full state and state dtypes to
``OUT_DIR/<name>.pt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from ds_worker import LR, STATE_KEYS, data, global_batches, make_model
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


def train(out: Path, name: str, flags: dict, mp_policy: MixedPrecisionPolicy | None = None) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    images, labels = data()
    model = sharded_model(mp_policy)
    optimizer = WAME(model.parameters(), lr=LR, **flags)
    losses = []
    for idx in global_batches(STEPS):
        mine = idx.chunk(world)[rank]
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(images[mine]).float(), labels[mine])
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    states = {n: optimizer.state[p] for n, p in model.named_parameters()}
    result = {
        "params": {n: full(p.detach()) for n, p in model.named_parameters()},
        "state": {n: {k: full(s[k]) for k in STATE_KEYS} for n, s in states.items()},
        "state_is_dtensor": all(isinstance(s[k], DTensor) for s in states.values() for k in STATE_KEYS),
        "dtypes": {n: {k: s[k].dtype for k in STATE_KEYS} for n, s in states.items()},
        "wame_steps": sorted({int(s["step"]) for s in states.values()}),
        "losses": losses,
    }
    if rank == 0:
        torch.save(result, out / f"{name}.pt")


def main() -> None:
    out = Path(sys.argv[1])
    dist.init_process_group("gloo")
    for name, flags in IMPLEMENTATIONS.items():
        train(out, name, flags)
    train(out, "bf16", {}, MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
