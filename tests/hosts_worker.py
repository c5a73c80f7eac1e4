"""WAME inside the training hosts people run, on real processes (torchrun, gloo, CPU):

    torchrun --nproc_per_node N tests/hosts_worker.py OUT_DIR '[["scenario", {options}], ...]'

Scenarios: ``deepspeed`` (unchanged ``deepspeed.initialize`` after ``register()``), ``hf`` (transformers'
Trainer), ``accelerate`` (Accelerator with a DeepSpeed plugin) and ``lightning`` (DeepSpeedStrategy). Each
run trains a tiny two-group regression network for a few steps; rank 0 writes :func:`report` of every run
to ``OUT_DIR/<name>.pt`` and ``OUT_DIR/<name>.error`` for a run that raised, for tests/test_hosts.py.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
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
RESUME_STEPS = 9  #: where the resumed runs stop


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


def report(engine) -> dict:
    """What the tests check (collective: all ranks call it): the optimizer chain DeepSpeed steps, WAME's
    step counts against the engine's, the gathered fp32 parameters, and for every parameter and state key
    whether ``safe_get_full_optimizer_state`` finds it (with its shape)."""
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
        "linked": linked,
        "params": params,
        "shapes": {
            n: tuple(p.ds_shape if hasattr(p, "ds_shape") else p.shape)
            for n, p in engine.module.named_parameters()
        },
    }


def loaded(engine) -> dict:
    """What a ZeRO engine holds right after loading a checkpoint, before its first step (DeepSpeed links the
    optimizer state to the parameters only then): the gathered fp32 parameters, WAME's step counts, the
    engine's steps."""
    return {
        "params": {n: safe_get_full_fp32_param(p).clone() for n, p in engine.module.named_parameters()},
        "wame_steps": sorted({int(s["step"]) for s in require_wame(engine).state.values()}),
        "global_steps": engine.global_steps - engine.skipped_steps,
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
        for x, y in rank_batches(steps, engine.train_micro_batch_size_per_gpu()):
            loss = torch.nn.functional.mse_loss(engine(x.to(dtype)).float(), y)
            engine.backward(loss)
            engine.step()
        save(out, f"deepspeed_{name}", report(engine))
        log(f"deepspeed {name}")
    for name, params in {
        "bad_key": {"lr": LR, "momentum": 0.9},
        "bad_value": {"alpha": 1.5},
    }.items():
        config = ds_config(ZERO["zero2"])
        config["optimizer"]["params"] = params
        try:
            deepspeed.initialize(model=make_net(), config=config)
        except ValueError as error:
            save_error(out, f"deepspeed_{name}", error)


# ------------------------------------------------------------------------------------------- HF Trainer
class Regressor(torch.nn.Module):
    """:func:`make_net` with the interface HF Trainer expects: keyword inputs, a dict holding the loss."""

    def __init__(self) -> None:
        super().__init__()
        self.net = make_net()

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": torch.nn.functional.mse_loss(self.net(x), labels)}


def hf_dataset() -> list[dict[str, torch.Tensor]]:
    x, y = samples()
    return [{"x": x[i], "labels": y[i]} for i in range(SAMPLES)]


def accelerate_on_cpu() -> None:
    """Accelerate's process state for DeepSpeed over gloo on CPU ranks.

    Accelerate picks its DeepSpeed backend from the accelerator it finds (CUDA, XPU, ...) and, on a machine
    with none, falls back to one process; given the backend explicitly it keeps the launcher's ranks. This
    is the test's only departure from a GPU run: HF Trainer reuses this state (``use_configured_state``).
    """
    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    PartialState(backend="gloo")


def hf_arguments(output_dir: Path, config: dict, steps: int, save: bool):
    """HF Trainer's arguments for ``steps`` steps of global batch GLOBAL_BATCH under DeepSpeed ``config``;
    ``save``: a checkpoint at the last step."""
    from transformers import TrainingArguments

    return TrainingArguments(
        accelerator_config={"use_configured_state": True},
        output_dir=str(output_dir),
        per_device_train_batch_size=GLOBAL_BATCH // dist.get_world_size(),
        max_steps=steps,
        learning_rate=LR,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        save_strategy="steps" if save else "no",
        save_steps=steps,
        report_to="none",
        disable_tqdm=True,
        deepspeed=copy.deepcopy(config),
    )


def hf_config() -> dict:
    """The DeepSpeed config naming WAME, lr from the Trainer (ZeRO-2)."""
    config = ds_config(ZERO["zero2"])
    config["optimizer"]["params"]["lr"] = "auto"
    return config


def scenario_hf(out: Path, steps: int = STEPS) -> None:
    """HF Trainer with ZeRO-2: WAME named in the DeepSpeed config (``"lr": "auto"``), WAME through
    ``optimizer_cls_and_kwargs`` (HF's two parameter groups), and ``optimizers=(WAME(...), None)``, which
    transformers drops under DeepSpeed (the RequireWAME callback must stop it)."""
    from transformers import Trainer

    from wame_dist import WAME
    from wame_dist.integrations.hf import RequireWAME

    wame_dist.deepspeed.register()

    without = {key: value for key, value in ds_config(ZERO["zero2"]).items() if key != "optimizer"}
    routes = {
        "hf_config": (hf_config(), {}),
        "hf_cls_and_kwargs": (without, {"optimizer_cls_and_kwargs": (WAME, {"lr": LR})}),
        "hf_optimizers": (without, {"optimizers": "WAME instance"}),
    }
    for name, (config, extra) in routes.items():
        accelerate_on_cpu()
        args = hf_arguments(out / name, config, steps, save=name == "hf_config")  # writes checkpoint-{steps}/
        model = Regressor()
        if extra.get("optimizers"):
            extra = {"optimizers": (WAME(model.parameters(), lr=LR), None)}
        trainer = Trainer(model=model, args=args, train_dataset=hf_dataset(), **extra)
        trainer.add_callback(RequireWAME(trainer))
        try:
            trainer.train()
        except ValueError as error:
            save_error(out, name, error)
            continue
        save(out, name, report(trainer.model_wrapped))
        log(name)


# ------------------------------------------------------------------------------------------- Accelerate
def scenario_accelerate(out: Path, steps: int = STEPS) -> None:
    """Accelerator with a DeepSpeed plugin (ZeRO-2): WAME named in the config (``DummyOptim``), with and
    without optimizer offload; a WAME instance under offload, where Accelerate swaps it for DeepSpeedCPUAdam
    unless the config sets ``zero_force_ds_cpu_optimizer: false`` (``require_wame`` must catch the swap)."""
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin, DummyOptim

    from wame_dist import WAME
    from wame_dist.errors import BadInput

    wame_dist.deepspeed.register()

    micro = {"train_micro_batch_size_per_gpu": GLOBAL_BATCH // dist.get_world_size()}
    client = {
        key: value for key, value in ds_config(ZERO["zero2_offload"], **micro).items() if key != "optimizer"
    }
    routes = {
        "accelerate_config": (ds_config(ZERO["zero2"], **micro), DummyOptim),
        "accelerate_config_offload": (ds_config(ZERO["zero2_offload"], **micro), DummyOptim),
        "accelerate_client_offload_flag": ({**client, "zero_force_ds_cpu_optimizer": False}, WAME),
        "accelerate_client_offload": (client, WAME),
    }
    for name, (config, optimizer_class) in routes.items():
        accelerate_on_cpu()
        accelerator = Accelerator(deepspeed_plugin=DeepSpeedPlugin(hf_ds_config=copy.deepcopy(config)))
        net = make_net()
        engine, optimizer = accelerator.prepare(net, optimizer_class(param_groups(net), lr=LR))
        try:
            require_wame(optimizer)
        except BadInput as error:
            save_error(out, name, error)
            continue
        for x, y in rank_batches(steps, micro["train_micro_batch_size_per_gpu"]):
            loss = torch.nn.functional.mse_loss(engine(x), y)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
        save(out, name, report(engine))
        if name == "accelerate_config":
            accelerator.save_state(str(out / f"{name}.state"))  # DeepSpeed's folder, tag pytorch_model
        log(name)


# -------------------------------------------------------------------------------------------- Lightning
def cpu_deepspeed_strategy():
    """TEST ONLY: Lightning's DeepSpeedStrategy with its three GPU assumptions lifted, so that it runs on
    CPU ranks over gloo. Stock Lightning refuses ("The DeepSpeed strategy is only supported on CUDA GPUs");
    everything else, DeepSpeed's engine included, is Lightning's own code."""
    import lightning.pytorch as pl
    from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy

    class CPUDeepSpeedStrategy(DeepSpeedStrategy):
        def setup_environment(self) -> None:
            DDPStrategy.setup_environment(self)  # 1. skips the check that the accelerator is CUDA

        def setup_distributed(self) -> None:
            pl.seed_everything(0)  # 2. skips the check that device indices equal local ranks (CPU: None)
            self.set_world_ranks()
            self._init_deepspeed_distributed()

        @property
        def root_device(self) -> torch.device:
            return torch.device("cpu", self.local_rank)  # 3. DeepSpeed's device_rank: the local rank

    return CPUDeepSpeedStrategy


def lightning_run(config: dict, client: bool, steps: int, callbacks: tuple = ()):
    """A Lightning run's trainer (the CPU DeepSpeed strategy with ``config``, ``steps`` steps, RequireWAME and
    ``callbacks``), module (WAME from ``configure_optimizers`` when ``client``, else from the config) and
    loader (global batch GLOBAL_BATCH)."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    from wame_dist import WAME
    from wame_dist.integrations.lightning import RequireWAME

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = make_net()

        def training_step(self, batch, batch_idx):
            return torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return WAME(param_groups(self.net), lr=LR) if client else None

    trainer = pl.Trainer(
        accelerator="cpu",
        devices=dist.get_world_size(),
        strategy=cpu_deepspeed_strategy()(config=copy.deepcopy(config)),
        max_steps=steps,
        callbacks=[RequireWAME(), *callbacks],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    loader = DataLoader(TensorDataset(*samples()), batch_size=GLOBAL_BATCH // dist.get_world_size())
    return trainer, Module(), loader


def scenario_lightning(out: Path, steps: int = STEPS) -> None:
    """Lightning's DeepSpeedStrategy, ZeRO-2: WAME from ``configure_optimizers`` (with optimizer offload:
    refused by DeepSpeed unless ``zero_force_ds_cpu_optimizer`` is false) and WAME named in the config (with
    and without offload)."""
    from deepspeed.runtime.zero.utils import ZeRORuntimeException

    wame_dist.deepspeed.register()

    client = {key: value for key, value in ds_config(ZERO["zero2"]).items() if key != "optimizer"}
    client_offload = {**client, "zero_optimization": ZERO["zero2_offload"]}
    routes = {
        "lightning_client": (client, True),
        "lightning_client_offload": (client_offload, True),
        "lightning_client_offload_flag": ({**client_offload, "zero_force_ds_cpu_optimizer": False}, True),
        "lightning_config": (ds_config(ZERO["zero2"]), False),
        "lightning_config_offload": (ds_config(ZERO["zero2_offload"]), False),
    }
    for name, (config, from_module) in routes.items():
        trainer, module, loader = lightning_run(config, from_module, steps)
        try:
            trainer.fit(module, loader)
        except ZeRORuntimeException as error:
            save_error(out, name, error)
            continue
        save(out, name, report(trainer.strategy.model))
        if name == "lightning_config":
            trainer.save_checkpoint(out / f"{name}.ckpt")  # a folder: DeepSpeed's checkpoint
        log(name)


# -------------------------------------------------------------------------- resuming through the host
def scenario_resume(out: Path, accelerate: str, hf: str, lightning: str, steps: int = RESUME_STEPS) -> None:
    """Accelerate (``load_state(accelerate)``), HF Trainer (``resume_from_checkpoint=hf``) and Lightning
    (``fit(ckpt_path=lightning)``) resume the ``accelerate_config`` / ``hf_config`` / ``lightning_config``
    runs from their checkpoints (resharded for this world size) and train on to ``steps`` steps (Accelerate:
    on global batches STEPS..steps-1, as the saving run would have). ``OUT_DIR/{host}_resumed.pt``: ``start``,
    :func:`loaded` right after loading (HF, Lightning: with the host's global step, as the run's first
    callback sees it), and ``end``, :func:`report` after the run (with the host's global step)."""
    import lightning.pytorch as pl
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin, DummyOptim
    from transformers import Trainer, TrainerCallback

    from wame_dist.integrations.hf import RequireWAME

    wame_dist.deepspeed.register()

    accelerate_on_cpu()
    micro = GLOBAL_BATCH // dist.get_world_size()
    config = ds_config(ZERO["zero2"], train_micro_batch_size_per_gpu=micro)
    accelerator = Accelerator(deepspeed_plugin=DeepSpeedPlugin(hf_ds_config=config))
    net = make_net()
    engine, optimizer = accelerator.prepare(net, DummyOptim(param_groups(net), lr=LR))
    accelerator.load_state(accelerate)
    start = loaded(engine)
    for x, y in rank_batches(steps, micro)[STEPS:]:
        accelerator.backward(torch.nn.functional.mse_loss(engine(x), y))
        optimizer.step()
        optimizer.zero_grad()
    save(out, "accelerate_resumed", {"start": start, "end": report(engine)})
    log("accelerate_resumed")

    class HFStart(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            start.update(loaded(trainer.model_wrapped), host_step=state.global_step)

    accelerate_on_cpu()
    start = {}
    trainer = Trainer(
        model=Regressor(),
        args=hf_arguments(out / "hf_resumed", hf_config(), steps, save=False),
        train_dataset=hf_dataset(),
        callbacks=[HFStart()],
    )
    trainer.add_callback(RequireWAME(trainer))
    trainer.train(resume_from_checkpoint=hf)
    end = {**report(trainer.model_wrapped), "host_step": trainer.state.global_step}
    save(out, "hf_resumed", {"start": start, "end": end})
    log("hf_resumed")

    class LightningStart(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            start.update(loaded(trainer.strategy.model), host_step=trainer.global_step)

    start = {}
    trainer, module, loader = lightning_run(ds_config(ZERO["zero2"]), False, steps, (LightningStart(),))
    trainer.fit(module, loader, ckpt_path=lightning)
    end = {**report(trainer.strategy.model), "host_step": trainer.global_step}
    save(out, "lightning_resumed", {"start": start, "end": end})
    log("lightning_resumed")


def log(message: str) -> None:
    if dist.get_rank() == 0:
        print(f"[hosts_worker {time.monotonic() - START:.1f}s] {message}", flush=True)


SCENARIOS = {
    "deepspeed": scenario_deepspeed,
    "hf": scenario_hf,
    "accelerate": scenario_accelerate,
    "lightning": scenario_lightning,
    "resume": scenario_resume,
}


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
