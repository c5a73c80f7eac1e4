"""Full training steps under PyTorch FSDP2 (``fully_shard``): WAME against torch's Adam, on 1 and 2 ranks.

    python benchmarks/fsdp2_step.py [--rounds 15] [--width 1.0] [--batch 64]

For each world size (1, 2), two networks (Table 1a on digits, the same weights) are sharded as
``launch/train.py --engine fsdp2`` shards them, one trained by WAME (its default, fused implementation),
one by ``torch.optim.Adam(fused=True)``. Their steps (forward, backward, optimizer) are interleaved round
by round in the same processes; the figure is the median over rounds of WAME's step time divided by Adam's
in the same round. Also printed: each optimizer's state per rank (bytes, and bytes per parameter of the
rank's shards). The script starts torchrun itself (gloo, CPU); ``--worker`` is its per-rank entry point.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp import MixedPrecisionPolicy
    from torch.distributed.tensor import DTensor

    from wame_dist import WAME
    from wame_dist.data import load_splits
    from wame_dist.training.engines.fsdp2 import shard
    from wame_dist.training.init_weights import initial_network, network_settings

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    images, labels = load_splits("digits").train
    micro = args.batch // world
    settings = network_settings("digits", "table1a", args.width)
    runs = {}
    for rule, make in (
        ("WAME", lambda params: WAME(params, lr=1e-3)),
        ("Adam", lambda params: torch.optim.Adam(params, lr=1e-3, fused=True)),
    ):
        model = shard(initial_network(settings, seed=0), MixedPrecisionPolicy())
        runs[rule] = (model, make(model.parameters()))

    def step(model, optimizer, i):
        idx = torch.arange(i * args.batch + rank * micro, i * args.batch + (rank + 1) * micro) % len(labels)
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(images[idx]), labels[idx]).backward()
        optimizer.step()

    times = {rule: [] for rule in runs}
    for i in range(args.rounds + 2):  # the first two rounds warm up (state allocation, first touch)
        for rule, (model, optimizer) in runs.items():
            dist.barrier()
            started = time.perf_counter()
            step(model, optimizer, i)
            dist.barrier()
            if i >= 2:
                times[rule].append(time.perf_counter() - started)

    def local(t):
        return t.to_local() if isinstance(t, DTensor) else t

    memory = {}
    for rule, (model, optimizer) in runs.items():
        tensors = [local(t) for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
        state_bytes = sum(t.numel() * t.element_size() for t in tensors if t.dim() > 0)
        shards = sum(local(p).numel() for p in model.parameters())
        memory[rule] = {"bytes": state_bytes, "per_param": state_bytes / max(shards, 1)}
    results = {
        "ms": {rule: 1e3 * statistics.median(t) for rule, t in times.items()},
        "ratio": statistics.median(w / a for w, a in zip(times["WAME"], times["Adam"])),
        "memory": memory,
    }
    if rank == 0:
        Path(args.out).write_text(json.dumps(results))
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--width", type=float, default=1.0, help="Table 1a width (1.0: 6.7M parameters)")
    parser.add_argument("--batch", type=int, default=64, help="global batch")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    torchrun = Path(sys.executable).with_name("torchrun")
    print("| ranks | WAME ms/step | Adam ms/step | WAME / Adam (median of rounds) | state/rank WAME | "
          "state/rank Adam |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|")
    for world in (1, 2):
        out = Path(f"/tmp/fsdp2_step_{os.getpid()}_{world}.json")
        command = [str(torchrun), "--standalone", "--nproc_per_node", str(world), __file__, "--worker",
                   "--out", str(out), "--rounds", str(args.rounds), "--width", str(args.width),
                   "--batch", str(args.batch)]  # fmt: skip
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        r = json.loads(out.read_text())
        mem = r["memory"]
        print(
            f"| {world} | {r['ms']['WAME']:.1f} | {r['ms']['Adam']:.1f} | {r['ratio']:.3f} | "
            f"{mem['WAME']['bytes'] / 2**20:.1f} MiB ({mem['WAME']['per_param']:.1f} B/param) | "
            f"{mem['Adam']['bytes'] / 2**20:.1f} MiB ({mem['Adam']['per_param']:.1f} B/param) |"
        )
        out.unlink()


if __name__ == "__main__":
    main()
