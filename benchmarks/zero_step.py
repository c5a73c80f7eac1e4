"""Full training steps under DeepSpeed ZeRO-2: WAME (fp32 and bf16 state) against DeepSpeed's Adam, on 1
and 2 ranks.

    python benchmarks/zero_step.py [--rounds 15] [--width 1.0] [--batch 64]

For each world size (1, 2) and each config (ZeRO-2; ZeRO-2 with the optimizer offloaded to the CPU), three
engines train the same network (Table 1a on digits) from the same weights: WAME, WAME with
``state_dtype="bf16"``, and DeepSpeed's Adam for that config (its fused Adam; DeepSpeedCPUAdam under
offload). Their steps (forward, backward, optimizer) are interleaved round by round in the same processes;
the figure is the median over rounds of each WAME's step time divided by Adam's in the same round. Also
printed: each engine's optimizer state per rank (bytes, and bytes per parameter of the rank's partition).
The script starts torchrun itself; ``--worker`` is its per-rank entry point.
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

#: The engines compared, by the name the table gives them; Adam is the anchor.
RULES = {
    "WAME": {"type": "WAME", "params": {"lr": 1e-3}},
    "WAME bf16 state": {"type": "WAME", "params": {"lr": 1e-3, "state_dtype": "bf16"}},
    "Adam": {"type": "Adam", "params": {"lr": 1e-3}},
}

CONFIGS = {
    "ZeRO-2": {"stage": 2},
    "ZeRO-2 offload": {"stage": 2, "offload_optimizer": {"device": "cpu", "pin_memory": False}},
}


def worker(args: argparse.Namespace) -> None:
    import deepspeed
    import torch
    import torch.distributed as dist

    import wame_dist.deepspeed
    from wame_dist.data import load_splits
    from wame_dist.launch_env import discover
    from wame_dist.training.init_weights import initial_network, network_settings

    discover()
    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    images, labels = load_splits("digits").train
    micro = args.batch // world
    settings = network_settings("digits", "table1a", args.width)
    results = {}
    for name, zero in CONFIGS.items():
        engines = {}
        for rule, block in RULES.items():
            config = {
                "train_batch_size": args.batch,
                "gradient_clipping": 0.0,
                "optimizer": block,
                "zero_optimization": zero,
                "steps_per_print": 10**9,
            }
            model = initial_network(settings, seed=0)
            engines[rule], *_ = wame_dist.deepspeed.initialize(
                model=model, model_parameters=model.parameters(), config=config
            )

        def step(engine, i):
            idx = torch.arange(i * args.batch + rank * micro, i * args.batch + (rank + 1) * micro) % len(
                labels
            )
            loss = torch.nn.functional.cross_entropy(engine(images[idx]), labels[idx])
            engine.backward(loss)
            engine.step()

        times = {rule: [] for rule in engines}
        for i in range(args.rounds + 2):  # the first two rounds warm up (state allocation, first touch)
            for rule, engine in engines.items():
                dist.barrier()
                started = time.perf_counter()
                step(engine, i)
                dist.barrier()
                if i >= 2:
                    times[rule].append(time.perf_counter() - started)
        memory = {}
        for rule, engine in engines.items():
            base = engine.optimizer.optimizer
            tensors = [
                t for s in base.state.values() for t in s.values() if torch.is_tensor(t) and t.dim() > 0
            ]
            partition = sum(p.numel() for g in base.param_groups for p in g["params"])
            state_bytes = sum(t.numel() * t.element_size() for t in tensors)
            memory[rule] = {"bytes": state_bytes, "per_param": state_bytes / max(partition, 1)}
        results[name] = {
            "ms": {rule: 1e3 * statistics.median(t) for rule, t in times.items()},
            "ratio": {
                rule: statistics.median(w / a for w, a in zip(t, times["Adam"])) for rule, t in times.items()
            },
            "memory": memory,
            "params": sum(p.numel() for p in engines["WAME"].module.parameters()),
        }
        del engines
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
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    torchrun = Path(sys.executable).with_name("torchrun")
    print("| ranks | config | engine | ms/step | x Adam (median of rounds) | state/rank |")
    print("|---:|---|---|---:|---:|---:|")
    for world in (1, 2):
        out = Path(f"/tmp/zero_step_{os.getpid()}_{world}.json")
        command = [str(torchrun), "--standalone", "--nproc_per_node", str(world), __file__, "--worker",
                   "--out", str(out), "--rounds", str(args.rounds), "--width", str(args.width),
                   "--batch", str(args.batch)]  # fmt: skip
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for name, r in json.loads(out.read_text()).items():
            for rule in RULES:
                mem = r["memory"][rule]
                print(
                    f"| {world} | {name} | {rule} | {r['ms'][rule]:.1f} | {r['ratio'][rule]:.3f} | "
                    f"{mem['bytes'] / 2**20:.1f} MiB ({mem['per_param']:.1f} B/param) |"
                )
        out.unlink()


if __name__ == "__main__":
    main()
