"""One training run under DeepSpeed or FSDP2: data, network, engine, epochs, evaluation, checkpoints, result.

Read top to bottom, :func:`train` is the whole run. Everything that differs between launchers was settled
before (:mod:`wame_dist.launch_env`), everything that differs between engines is behind
:mod:`wame_dist.training.engines`; everything rank 0 alone does is marked.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from wame_dist import provenance
from wame_dist.data import DeviceBatches, load_splits
from wame_dist.launch_env import discover
from wame_dist.models import count_parameters, set_samples
from wame_dist.training import checkpoints, engines, init_weights
from wame_dist.training.config import RunConfig
from wame_dist.training.ds_setup import run_deepspeed_config
from wame_dist.training.progress import Progress
from wame_dist.training.results import RunRecorder


def check(run: RunConfig) -> str:
    """What can be checked before any rank starts, as :func:`train` checks it: the DeepSpeed config with
    the run's overrides (the batch against the world size is checked at start), the data set's files and
    the initial-weights file. Raises :class:`~wame_dist.errors.BadInput`; returns a one-line summary."""
    config = run_deepspeed_config(run, world_size=None)
    splits = load_splits(run.data.dataset, run.data.data_dir, download=run.data.download)
    settings = init_weights.network_settings(run.data.dataset, run.model_name, run.model.width)
    if run.init_weights:
        model = init_weights.initial_network(settings, run.seed)
        init_weights.load_init_weights(run.init_weights, model, {**settings, "seed": run.seed})
    return (
        f"{run.data.dataset} ({len(splits.train[1])} training samples), {run.model_name} x{run.model.width}, "
        f"{config['optimizer']['type']} {config['optimizer'].get('params', {})}, {run.epochs} epoch(s), "
        f"initial weights {run.init_weights or f'drawn from seed {run.seed}'}"
    )


def train(run: RunConfig) -> dict[str, Any]:
    """Trains as ``run`` says and returns the result (rank 0 also writes it to ``run.out_dir``)."""
    splits = load_splits(run.data.dataset, run.data.data_dir, download=run.data.download)  # missing: BadInput
    launch = discover()
    engine = engines.start(run, launch)  # bad configs and batch sizes fail here, before any work
    rank, world = dist.get_rank(), dist.get_world_size()
    device = engine.device
    progress = Progress(enabled=rank == 0)
    environment = provenance.collect(launch.launcher)
    effective_config = copy.deepcopy(engine.config)  # before DeepSpeed adds its own keys to it

    splits = splits.to(device)
    settings = init_weights.network_settings(run.data.dataset, run.model_name, run.model.width)
    model = init_weights.initial_network(settings, run.seed)
    if run.init_weights:
        init_weights.load_init_weights(run.init_weights, model, {**settings, "seed": run.seed})
    init_hash = init_weights.parameters_hash(model)
    init_weights.check_identical_across_ranks(init_hash)  # fails loudly on any mismatch
    on_gpu = device.type == "cuda"
    if on_gpu:
        model = model.to(memory_format=torch.channels_last)  # NHWC: faster cuDNN convolutions
    progress.log(
        f"{run.data.dataset}: {run.model_name} x{run.model.width} ({count_parameters(model):,} parameters), "
        f"{engine.optimizer_block['type']}, {world} rank(s) under {run.engine}, init {init_hash[:12]}"
    )
    engine.build(model)

    images, labels = splits.train
    sampler = DistributedSampler(
        labels, num_replicas=world, rank=rank, shuffle=True, seed=run.seed, drop_last=True
    )
    batches = DeviceBatches(
        images, labels, engine.micro_batch, sampler, drop_last=True, channels_last=on_gpu, with_indices=True
    )
    recorder = RunRecorder(
        run,
        settings,
        init_hash,
        engine.optimizer_block,
        enabled=rank == 0,
        environment=environment,
        effective_config=effective_config,
    )
    start_epoch = checkpoints.resume(engine, run, recorder)

    for epoch in range(start_epoch, run.epochs + 1):
        started = time.perf_counter()
        engine.train()
        batches.set_epoch(epoch)
        loss_sum = torch.zeros((), device=device)
        seen = 0
        for x, y, idx in progress.steps(batches, f"epoch {epoch}/{run.epochs}"):
            set_samples(model, run.seed, epoch, idx)  # dropout masks: per sample, not per rank
            loss = torch.nn.functional.cross_entropy(engine(x).float(), y)
            engine.step(loss)  # backward and optimizer step
            loss_sum += loss.detach() * len(y)
            seen += len(y)
            if run.max_steps is not None and engine.global_steps >= run.max_steps:
                break
        dist.all_reduce(loss_sum)
        train_loss = loss_sum.item() / (seen * world)
        val_acc = evaluate(engine, *splits.validation, batches.batch_size)
        test_acc = (
            val_acc
            if splits.test is splits.validation
            else evaluate(engine, *splits.test, batches.batch_size)
        )
        recorder.epoch(epoch, train_loss, val_acc, test_acc, time.perf_counter() - started)
        progress.log(recorder.describe_last())
        if run.checkpoint_every and (epoch % run.checkpoint_every == 0 or epoch == run.epochs):
            checkpoints.save(engine, run, epoch, recorder)
        if run.max_steps is not None and engine.global_steps >= run.max_steps:
            break

    result = recorder.finish(asdict(run), engine.global_steps)
    dist.barrier()
    return result


@torch.no_grad()
def evaluate(engine, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> float:
    """Accuracy over the whole split: each rank scores every world-th sample, counts are summed.

    All ranks run the same number of forward passes (ZeRO-3 and FSDP2 gather parameters collectively),
    padding the shorter shards with sample 0 at weight 0.
    """
    engine.eval()
    rank, world = dist.get_rank(), dist.get_world_size()
    mine = torch.arange(rank, len(labels), world, device=labels.device)
    per_rank = -(-len(labels) // world)
    weight = torch.ones(per_rank, device=labels.device)
    weight[len(mine) :] = 0
    mine = torch.cat([mine, mine.new_zeros(per_rank - len(mine))])
    correct = torch.zeros((), device=labels.device)
    for start in range(0, per_rank, batch_size):
        idx, w = mine[start : start + batch_size], weight[start : start + batch_size]
        predicted = engine(images[idx]).argmax(dim=1)
        correct += ((predicted == labels[idx]).float() * w).sum()
    dist.all_reduce(correct)
    return correct.item() / len(labels)
