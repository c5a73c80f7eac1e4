"""Multi-rank DeepSpeed scenarios for the tests, run under a real launcher (torchrun, deepspeed, mpirun):

    torchrun --nproc_per_node N tests/ds_worker.py SCENARIO OUT_DIR [--configs a,b] [--ckpt DIR] ...

Several DeepSpeed engines are built one after another in the same processes, so a launch (10-20 s of
start-up on CPU) serves a whole group of checks. Rank 0 writes each result to ``OUT_DIR/<name>.pt``; the
tests compare them with :func:`reference_run`, plain single-process WAME on the same global batches.

The model is the paper's Table 1a network at 1/8 width on the digits data with dropout off (so that runs on
different numbers of ranks see the same function); batches follow ``DistributedSampler``'s permutation.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state
from torch.utils.data import DistributedSampler

from wame_dist import WAME
from wame_dist.data import load_splits
from wame_dist.deepspeed import initialize, require_wame
from wame_dist.launch_env import discover

STATE_KEYS = ("prev_sign", "zeta", "z", "theta")
GLOBAL_BATCH = 32
LR = 1e-3

ZERO = {
    "zero1": {"stage": 1},
    "zero2": {"stage": 2},
    "zero3": {"stage": 3},
    "zero2_offload": {"stage": 2, "offload_optimizer": {"device": "cpu"}},
    "zero3_offload": {"stage": 3, "offload_optimizer": {"device": "cpu"}},
}


def ds_config(zero: str, variant: str = "algorithm1", state_dtype: str = "fp32", **extra) -> dict:
    """The config of a run under ``ZERO[zero]``; ``variant="keras"`` and ``state_dtype="bf16"`` are named
    in the WAME block."""
    params = {"lr": LR, **({"variant": variant} if variant != "algorithm1" else {})}
    params.update({"state_dtype": state_dtype} if state_dtype != "fp32" else {})
    return {
        "train_batch_size": GLOBAL_BATCH,
        "gradient_clipping": 0.0,  # DeepSpeed clips at 1.0 unless told otherwise
        "optimizer": {"type": "WAME", "params": params},
        "zero_optimization": ZERO[zero],
        "steps_per_print": 10**9,
        **extra,
    }


def make_model() -> torch.nn.Module:
    """A smooth network (tanh, no pooling ties, no dead units): WAME's step depends on each gradient's sign,
    so an element whose gradient is within float noise of 0 would take the opposite step when the ranks'
    sum rounds differently; a smooth network on real data has no such elements in 20 steps."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 5, padding=2),
        torch.nn.Tanh(),
        torch.nn.AvgPool2d(2),
        torch.nn.Conv2d(8, 16, 5, padding=2),
        torch.nn.Tanh(),
        torch.nn.AvgPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(16 * 7 * 7, 64),
        torch.nn.Tanh(),
        torch.nn.Linear(64, 10),
    )


def data():
    return load_splits("digits").train


def global_batches(steps: int, batch: int = GLOBAL_BATCH) -> list[torch.Tensor]:
    """Index sets of the first ``steps`` global batches: DistributedSampler's epoch-0 permutation cut in
    ``batch``-sized runs (rank r of W takes every W-th index of each run, whatever W is)."""
    labels = data()[1]
    order = list(DistributedSampler(labels, num_replicas=1, rank=0, shuffle=True, seed=0, drop_last=True))
    return [torch.tensor(order[k * batch : (k + 1) * batch]) for k in range(steps)]


def reference_run(
    steps: int, clip: float = 0.0, variant: str = "algorithm1", state_dtype: str = "fp32"
) -> tuple[dict, dict]:
    """Plain WAME, one process, the same global batches: final parameters and state by parameter name
    (the state also holds ``weight_before_last_step``: the Keras variant's ``prev_sign`` is its sign).
    Each parameter is placed where ZeRO-1/2's flat buffer holds it (row 0, its offset in the model's
    parameters laid end to end), which keys compact state's rounding as ZeRO's partitions key it."""
    images, labels = data()
    model = make_model()
    optimizer = WAME(model.parameters(), lr=LR, variant=variant, state_dtype=state_dtype)
    offsets = torch.tensor([0] + [p.numel() for p in model.parameters()]).cumsum(0).tolist()
    optimizer.place({p: (0, offset) for p, offset in zip(model.parameters(), offsets)})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks: a multi-threaded backward sums in another order
    try:
        for idx in global_batches(steps):
            before_step = {n: p.detach().clone() for n, p in model.named_parameters()}
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(images[idx]), labels[idx]).backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    state = {n: {k: optimizer.state[p][k].clone() for k in STATE_KEYS} for n, p in model.named_parameters()}
    for name, weight in before_step.items():  # what the Keras variant's prev_sign is the sign of
        state[name]["weight_before_last_step"] = weight
    return params, state


class Trainer:
    """One DeepSpeed engine on this rank's shard of the global batches."""

    def __init__(self, config: dict) -> None:
        self.engine, *_ = initialize(model=make_model(), model_parameters=None, config=copy.deepcopy(config))
        self.images, self.labels = data()
        world, rank = dist.get_world_size(), dist.get_rank()
        sampler = DistributedSampler(
            self.labels, num_replicas=world, rank=rank, shuffle=True, seed=0, drop_last=True
        )
        self.order = torch.tensor(list(sampler))
        self.micro = self.engine.train_micro_batch_size_per_gpu()
        self.dtype = (
            torch.bfloat16
            if self.engine.bfloat16_enabled()
            else (torch.float16 if self.engine.fp16_enabled() else torch.float32)
        )
        self.micro_steps = 0

    def step(self, loss_factor: float = 1.0) -> float:
        """One optimizer step (``gradient_accumulation_steps`` micro-batches); returns the last loss."""
        for _ in range(self.engine.gradient_accumulation_steps()):
            idx = self.order[self.micro_steps * self.micro : (self.micro_steps + 1) * self.micro]
            self.micro_steps += 1
            logits = self.engine(self.images[idx].to(self.dtype))
            loss = torch.nn.functional.cross_entropy(logits.float(), self.labels[idx]) * loss_factor
            self.engine.backward(loss)
            self.engine.step()
        return loss.item()

    def snapshot(self) -> dict:
        """Full parameters and WAME state, gathered from every rank (collective: all ranks call it)."""
        params, state = {}, {}
        for name, p in self.engine.module.named_parameters():
            params[name] = safe_get_full_fp32_param(p).detach().cpu().clone()
            state[name] = {k: safe_get_full_optimizer_state(p, k).detach().cpu().clone() for k in STATE_KEYS}
        wame = require_wame(self.engine)
        local = [t for s in wame.state.values() for t in s.values() if t.dim() > 0]
        state_bytes = torch.tensor([sum(t.numel() * t.element_size() for t in local)])
        gathered = [torch.zeros_like(state_bytes) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, state_bytes)
        return {
            "params": params,
            "state": state,
            "state_bytes_per_rank": [int(b) for b in gathered],
            "wame_steps": sorted({int(s["step"]) for s in wame.state.values()}),
            "global_steps": self.engine.global_steps,
            "skipped_steps": self.engine.skipped_steps,
            "world_size": dist.get_world_size(),
        }


def save(out: Path, name: str, result: dict) -> None:
    if dist.get_rank() == 0:
        torch.save(result, out / f"{name}.pt")


def scenario_train(
    out: Path,
    configs,
    steps=20,
    clip=0.0,
    accumulation=1,
    suffix="",
    variant="algorithm1",
    state_dtype="fp32",
) -> None:
    """fp32 training under each ZeRO config (optionally with clipping, gradient accumulation, or WAME's
    Keras variant or compact state named in the config's block)."""
    extra = {"gradient_clipping": clip}
    if accumulation > 1:
        extra["gradient_accumulation_steps"] = accumulation
    for zero in configs:
        trainer = Trainer(ds_config(zero, variant, state_dtype, **extra))
        for _ in range(steps):
            trainer.step()
        save(out, f"{zero}{suffix}", trainer.snapshot())


def scenario_mixed(out: Path, configs, steps=10) -> None:
    """bf16 and fp16 (dynamic loss scaling) train; a forced overflow skips the step and keeps WAME's state."""
    for zero in configs:
        for precision in ("bf16", "fp16"):
            fp16_scaling = {
                "initial_scale_power": 8,
                "hysteresis": 1,
            }  # halve the scale at the first overflow
            settings = {"enabled": True, **(fp16_scaling if precision == "fp16" else {})}
            trainer = Trainer(ds_config(zero, **{precision: settings}))
            result = {"losses": [trainer.step() for _ in range(steps)]}
            if precision == "fp16":
                before = trainer.snapshot()
                scale = trainer.engine.optimizer.cur_scale
                trainer.step(loss_factor=float("inf"))  # every gradient overflows
                result.update(
                    before=before,
                    after=trainer.snapshot(),
                    scales=(scale, trainer.engine.optimizer.cur_scale),
                )
            save(out, f"{zero}_{precision}", result)


def scenario_checkpoint(
    out: Path, configs, ckpt, steps=20, resume=True, state_dtype="fp32", suffix=""
) -> None:
    """Save at half time and continue; a fresh engine loads the checkpoint and continues the same way."""
    half = steps // 2
    for zero in configs:
        directory = Path(ckpt) / zero
        trainer = Trainer(ds_config(zero, state_dtype=state_dtype))
        for _ in range(half):
            trainer.step()
        trainer.engine.save_checkpoint(str(directory), tag=f"step{half}")
        for _ in range(steps - half):
            trainer.step()
        save(out, f"{zero}{suffix}_straight", trainer.snapshot())
        if resume:
            save(out, f"{zero}{suffix}_resumed", continued_from(directory, steps, state_dtype))


def scenario_load(out: Path, configs, ckpt, steps=20, state_dtype="fp32", suffix="") -> None:
    """Load a (resharded) checkpoint on this world size and continue to ``steps``."""
    for zero in configs:
        save(out, f"{zero}{suffix}_loaded", continued_from(Path(ckpt) / zero, steps, state_dtype))


def continued_from(directory: Path, steps: int, state_dtype: str = "fp32") -> dict:
    trainer = Trainer(ds_config(directory.name, state_dtype=state_dtype))
    trainer.engine.load_checkpoint(str(directory))
    done = trainer.engine.global_steps
    trainer.micro_steps = done * trainer.engine.gradient_accumulation_steps()
    for _ in range(steps - done):
        trainer.step()
    return trainer.snapshot()


SCENARIOS = {
    "train": scenario_train,
    "mixed": scenario_mixed,
    "checkpoint": scenario_checkpoint,
    "load": scenario_load,
}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", help="folder for rank 0's results")
    parser.add_argument(
        "plan", help='JSON list of [scenario, {options}], e.g. [["train", {"configs": ["zero2"]}]]'
    )
    parser.add_argument("--local_rank", type=int, default=None)  # added by the deepspeed launcher
    args = parser.parse_args(argv)
    discover()
    deepspeed.init_distributed(dist_backend="gloo")
    # This CPU has no native fp16 and DeepSpeed's CPU accelerator refuses fp16 on such CPUs; the
    # loss-scaling and overflow logic under test does not depend on it, so the check is bypassed.
    from deepspeed.accelerator import get_accelerator

    type(get_accelerator()).is_fp16_supported = lambda self: True
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for scenario, options in json.loads(args.plan):
        SCENARIOS[scenario](out, **options)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)  # several ranks share two cores; the reference run uses one thread too
    main(sys.argv[1:])
