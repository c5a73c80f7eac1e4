"""WAME inside the training hosts people run, on real processes (torchrun, gloo, CPU):

    torchrun --nproc_per_node N tests/hosts_worker.py OUT_DIR '[["scenario", {options}], ...]'

Scenarios: ``deepspeed`` (unchanged ``deepspeed.initialize`` after ``register()``), ``hf`` (transformers'
Trainer), ``accelerate`` (Accelerator with a DeepSpeed plugin) and ``lightning`` (DeepSpeedStrategy). Each
run trains a tiny two-group regression network for a few steps; rank 0 writes :func:`report` of every run
to ``OUT_DIR/<name>.pt`` and ``OUT_DIR/<name>.error`` for a run that raised, for tests/test_hosts.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

import wame_dist.deepspeed
from wame_dist.deepspeed import require_wame

START = time.monotonic()
STATE_KEYS = ("prev_sign", "zeta", "z", "theta")
GLOBAL_BATCH = 16
SAMPLES = 128
LR = 1e-2
STEPS = 6


def make_net() -> torch.nn.Sequential:
    """Three Linear layers with tanh, the same initial weights everywhere."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(8, 16),
        torch.nn.Tanh(),
        torch.nn.Linear(16, 16),
        torch.nn.Tanh(),
        torch.nn.Linear(16, 1),
    )


def param_groups(net: torch.nn.Module) -> list[dict]:
    """Two groups: weights at the default lr, biases at half of it."""
    named = list(net.named_parameters())
    return [
        {"params": [p for n, p in named if n.endswith("weight")]},
        {"params": [p for n, p in named if n.endswith("bias")], "lr": LR / 2},
    ]


def samples() -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth regression target of 8 inputs."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(SAMPLES, 8, generator=g)
    return x, torch.tanh(x[:, :1] - 0.5 * x[:, 1:2]) + 0.1 * x[:, 2:3]


def rank_batches(steps: int, micro: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's share of the first ``steps`` global batches (global batch k is samples [16k, 16k+16))."""
    x, y = samples()
    rank = dist.get_rank()
    out = []
    for k in range(steps):
        start = k * GLOBAL_BATCH + rank * micro
        out.append((x[start : start + micro], y[start : start + micro]))
    return out


def ds_config(zero: dict, **extra) -> dict:
    return {
        "train_batch_size": GLOBAL_BATCH,
        "gradient_clipping": 0.0,
        "optimizer": {"type": "WAME", "params": {"lr": LR}},
        "zero_optimization": zero,
        "steps_per_print": 10**9,
        **extra,
    }


ZERO = {
    "zero0": {"stage": 0},
    "zero1": {"stage": 1},
    "zero2": {"stage": 2},
    "zero3": {"stage": 3},
    "zero2_offload": {"stage": 2, "offload_optimizer": {"device": "cpu"}},
    "zero3_offload": {"stage": 3, "offload_optimizer": {"device": "cpu"}},
}


def report(engine, losses: list[float]) -> dict:
    """What the tests check (collective: all ranks call it): the optimizer chain DeepSpeed steps, WAME's
    step counts against the engine's, the loss curve, and for every parameter and state key whether
    ``safe_get_full_optimizer_state`` finds it (with its shape), plus the gathered fp32 parameters."""
    chain, current = [], engine.optimizer
    while current is not None:
        chain.append(type(current).__name__)
        current = getattr(current, "optimizer", None)
    wame = require_wame(engine)
    zero = engine.zero_optimization_stage() > 0  # without ZeRO, WAME steps the module's own parameters
    linked, params = {}, {}
    for name, p in engine.module.named_parameters():
        params[name] = (safe_get_full_fp32_param(p) if zero else p).detach().float().cpu().clone()
        linked[name] = {}
        for key in STATE_KEYS:
            try:
                state = safe_get_full_optimizer_state(p, key) if zero else wame.state[p][key]
                linked[name][key] = tuple(state.shape)
            except (ValueError, KeyError, AttributeError) as error:
                linked[name][key] = repr(error)
    return {
        "chain": chain,
        "wame_steps": sorted({int(s["step"]) for s in wame.state.values()}),
        "global_steps": engine.global_steps - engine.skipped_steps,
        "losses": losses,
        "linked": linked,
        "params": params,
        "shapes": {
            n: tuple(p.ds_shape if hasattr(p, "ds_shape") else p.shape)
            for n, p in engine.module.named_parameters()
        },
    }


def save(out: Path, name: str, result) -> None:
    if dist.get_rank() == 0:
        torch.save(result, out / f"{name}.pt")


def save_error(out: Path, name: str, error: BaseException) -> None:
    if dist.get_rank() == 0:
        (out / f"{name}.error").write_text(f"{type(error).__name__}: {error}")


# -------------------------------------------------------------------------------------------- plain DeepSpeed
def scenario_deepspeed(out: Path, runs: list[str], steps: int = STEPS) -> None:
    """Before ``register()``: DeepSpeed refuses a WAME config (and ``require_registered`` names the fix).
    After it (twice): ``deepspeed.initialize`` builds WAME from the config under each named ZeRO config
    (``bf16`` suffix: bf16), with two parameter groups; bad WAME blocks fail with wame_dist's messages."""
    for name, call in {
        "unregistered_deepspeed": lambda: deepspeed.initialize(
            model=make_net(), model_parameters=param_groups(make_net()), config=ds_config(ZERO["zero2"])
        ),
        "unregistered_check": lambda: wame_dist.deepspeed.require_registered(ds_config(ZERO["zero2"])),
    }.items():
        try:
            call()
        except (AssertionError, ValueError) as error:
            save_error(out, name, error)
    wame_dist.deepspeed.register()
    wame_dist.deepspeed.register()
    for name in runs:
        zero = name.removesuffix("_bf16")
        config = ds_config(ZERO[zero], **({"bf16": {"enabled": True}} if name.endswith("_bf16") else {}))
        net = make_net()
        config["optimizer"]["type"] = "wame" if zero == "zero1" else "WAME"  # any case
        engine, *_ = deepspeed.initialize(model=net, model_parameters=param_groups(net), config=config)
        dtype = torch.bfloat16 if engine.bfloat16_enabled() else torch.float32
        losses = []
        for x, y in rank_batches(steps, engine.train_micro_batch_size_per_gpu()):
            loss = torch.nn.functional.mse_loss(engine(x.to(dtype)).float(), y)
            engine.backward(loss)
            engine.step()
            losses.append(_mean(loss))
        save(out, f"deepspeed_{name}", report(engine, losses))
        log(f"deepspeed {name}")
    for name, params in {
        "bad_key": {"lr": LR, "betas": [0.9, 0.99]},
        "bad_value": {"alpha": 1.5},
    }.items():
        config = ds_config(ZERO["zero2"])
        config["optimizer"]["params"] = params
        try:
            deepspeed.initialize(model=make_net(), config=config)
        except ValueError as error:
            save_error(out, f"deepspeed_{name}", error)


def log(message: str) -> None:
    if dist.get_rank() == 0:
        print(f"[hosts_worker {time.monotonic() - START:.1f}s] {message}", flush=True)


def _mean(loss: torch.Tensor) -> float:
    """The loss averaged over the ranks (the global batch's loss)."""
    value = loss.detach().float().clone()
    dist.all_reduce(value)
    return value.item() / dist.get_world_size()


SCENARIOS = {"deepspeed": scenario_deepspeed}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("plan")
    args = parser.parse_args(argv)
    deepspeed.init_distributed(dist_backend="gloo")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for scenario, options in json.loads(args.plan):
        SCENARIOS[scenario](out, **options)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1:])
