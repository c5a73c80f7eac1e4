"""One run, the same on 1, 2 and 4 ranks, and across a reshard (2 -> 4 ranks) in the middle.

Each rank's micro-batch is its share of the same global batch (the data order depends on (seed, epoch)
only) and each sample's dropout mask on (seed, epoch, sample index) only, so the ranks compute the same
arithmetic as one rank, up to the order of float reductions: a gradient is summed over 64 samples on one
rank but over 4 x 16 on four. WAME's steps depend on signs, which amplify those last-bit differences
(``zeta`` moves by a factor of 1.2 or 0.1 on a sign change), so the runs drift apart slowly; the bounds
below say what is reached (and what issue 12 asked for); the README has the figures.

The run: digits, Table 1a at 1/4 width with its dropout, ZeRO-2 fp32, global batch 64, 2 epochs, seed 3.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
from launching import ROOT, run, torchrun
from torch.utils.data import DistributedSampler

from wame_dist.data import load_splits
from wame_dist.deepspeed.checkpoint import consolidate, exported, read_checkpoint, reshard
from wame_dist.models import set_samples
from wame_dist.optim import WAME
from wame_dist.training import init_weights

pytestmark = pytest.mark.multirank

TRAIN = ROOT / "launch" / "train.py"
CONFIG = str(ROOT / "configs" / "zero2.json")
EPOCHS = 2
SEED = 3
GLOBAL_BATCH = 64

#: The bounds the reshard-resume path meets (issue 12's): per-epoch training loss relative, accuracies in
#: samples, and the share of weights within WEIGHT_ATOL. Measured here (2026-12-01): loss 1.1e-7, 0 samples,
#: 100% of weights (max difference 3.4e-6).
RESUME_BOUNDS = {"loss_rel": 1e-3, "samples": 2, "weights_within": 0.85}
WEIGHT_ATOL = 1e-4

#: The drift the 2- and 4-rank runs show against the 1-rank run. Issue 12 asks for RESUME_BOUNDS here too;
#: that is NOT reached (test_issue_bounds_across_world_sizes, a strict xfail, says so in every run):
#: measured here (2026-12-01, the same on every run, OMP_NUM_THREADS=1), 2 ranks: loss 3.8e-4, 26/27
#: samples, 70.8% of weights; 4 ranks: loss 4.8e-3, 47/41 samples, 65.7%. With dropout off the drift is no
#: smaller (2%/1.6% loss, 65%/66% of weights), and one process summing the ranks' gradients reproduces it
#: (test_two_ranks_compute_what_one_process_computes_for_their_shares): it is the reduction order. This is
#: a regression guard (the measured drift with ~20% room), not a claim: a new world-size dependence shows.
MEASURED_DRIFT = {"loss_rel": 6e-3, "samples": 56, "weights_within": 0.6}


def train_args(out: Path, *extra: str) -> list[str]:
    return [
        "--deepspeed_config", CONFIG, "--dataset", "digits", "--width", "0.25", "--epochs", str(EPOCHS),
        "--batch-size", str(GLOBAL_BATCH), "--seed", str(SEED), "--out-dir", str(out), *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The run on 1, 2 and 4 ranks, and the 2-rank run's epoch-1 checkpoint resharded and resumed on 4."""
    outs = {}
    for ranks in (1, 2, 4):
        outs[f"{ranks} ranks"] = tmp_path_factory.mktemp(f"ranks{ranks}")
        run(torchrun(ranks, TRAIN, *train_args(outs[f"{ranks} ranks"])), timeout=900)
    resharded = tmp_path_factory.mktemp("resharded") / "epoch1_for_4"
    reshard(outs["2 ranks"] / "checkpoints", resharded, 4, tag="epoch0001")
    outs["2 -> 4 ranks"] = tmp_path_factory.mktemp("resumed")
    run(torchrun(4, TRAIN, *train_args(outs["2 -> 4 ranks"], "--resume-from", str(resharded))), timeout=900)
    return outs


def record(out: Path) -> dict:
    return json.loads((out / "result.json").read_text())


def final_weights(out: Path) -> torch.Tensor:
    """Every fp32 master weight at the end of the run, flattened in the model's order."""
    model = exported(consolidate(read_checkpoint(out / "checkpoints")))["model"]
    return torch.cat([tensor.flatten().double() for tensor in model.values()])


def differences(out: Path, reference: Path) -> dict[str, float]:
    """How far ``out`` ended from ``reference``: the measures the bounds apply to."""
    mine, theirs = record(out)["epochs"], record(reference)["epochs"]
    splits = load_splits("digits", None)
    n_val, n_test = len(splits.validation[1]), len(splits.test[1])
    weights, reference_weights = final_weights(out), final_weights(reference)
    return {
        "loss_rel": max(
            abs(a["train_loss"] / b["train_loss"] - 1) for a, b in zip(mine, theirs, strict=True)
        ),
        "val_samples": max(
            abs(a["val_acc"] - b["val_acc"]) * n_val for a, b in zip(mine, theirs, strict=True)
        ),
        "test_samples": max(
            abs(a["test_acc"] - b["test_acc"]) * n_test for a, b in zip(mine, theirs, strict=True)
        ),
        "weights_within": ((weights - reference_weights).abs() <= WEIGHT_ATOL).double().mean().item(),
        "weights_max": (weights - reference_weights).abs().max().item(),
    }


def check(runs: dict[str, Path], name: str, reference: str, bounds: dict[str, float]) -> None:
    found = differences(runs[name], runs[reference])
    print(f"{name} vs {reference}: {found}")
    assert len(record(runs[name])["epochs"]) == EPOCHS
    assert record(runs[name])["init_hash"] == record(runs[reference])["init_hash"]
    assert found["loss_rel"] <= bounds["loss_rel"], found
    assert max(found["val_samples"], found["test_samples"]) <= bounds["samples"] + 1e-9, found
    assert found["weights_within"] >= bounds["weights_within"], found


@pytest.mark.parametrize(
    ("name", "reference", "bounds"),
    [
        ("2 ranks", "1 ranks", MEASURED_DRIFT),
        ("4 ranks", "1 ranks", MEASURED_DRIFT),
        ("2 -> 4 ranks", "2 ranks", RESUME_BOUNDS),
    ],
)
def test_the_run_is_the_same_on_any_number_of_ranks(runs, name, reference, bounds) -> None:
    check(runs, name, reference, bounds)


@pytest.mark.xfail(strict=True, reason="reduction order differs between world sizes; WAME's signs amplify it")
@pytest.mark.parametrize("name", ["2 ranks", "4 ranks"])
def test_issue_bounds_across_world_sizes(runs, name) -> None:
    check(runs, name, "1 ranks", RESUME_BOUNDS)


def one_process_as_ranks(world: int) -> tuple[torch.Tensor, list[float]]:
    """The run computed in one process as ``world`` ranks compute it, without DeepSpeed: each rank's
    share of every global batch (``DistributedSampler``'s, ``world`` micro-batches of 64 / world), its
    keyed dropout masks, the ranks' gradients summed in rank order and divided by ``world``, and WAME
    (the run's block) on the model's own tensors. Returns the final weights and per-epoch training loss."""
    splits = load_splits("digits", None)
    images, labels = splits.train
    model = init_weights.initial_network(init_weights.network_settings("digits", "table1a", 0.25), SEED)
    block = json.loads(Path(CONFIG).read_text())["optimizer"]["params"]
    optimizer = WAME(model.parameters(), **block)
    losses = []
    for epoch in range(1, EPOCHS + 1):
        shares = []
        for rank in range(world):
            sampler = DistributedSampler(labels, world, rank, shuffle=True, seed=SEED, drop_last=True)
            sampler.set_epoch(epoch)
            shares.append(torch.tensor(list(sampler)).split(GLOBAL_BATCH // world))
        steps = len(sampler) // (GLOBAL_BATCH // world)
        loss_sum = 0.0
        for step in range(steps):
            gradients = []
            for rank in range(world):
                idx = shares[rank][step]
                set_samples(model, SEED, epoch, idx)
                model.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(images[idx]).float(), labels[idx])
                loss.backward()
                loss_sum += loss.item() * len(idx)
                gradients.append([p.grad.clone() for p in model.parameters()])
            for p, *per_rank in zip(model.parameters(), *gradients, strict=True):
                p.grad = functools.reduce(torch.add, per_rank) / world
            optimizer.step()
        losses.append(loss_sum / (steps * GLOBAL_BATCH))
    return torch.cat([p.detach().flatten().double() for p in model.parameters()]), losses


def test_two_ranks_compute_what_one_process_computes_for_their_shares(runs) -> None:
    """The 2-rank ZeRO-2 run is bitwise the one-process computation of its two ranks' shares (the sum of
    two gradients does not depend on its order): nothing but the split of the sums depends on the world
    size. (Four ranks' sums are reduced in an order of DeepSpeed's choosing, which one process does not
    reproduce.) Measured here (2026-12-01): every weight identical; losses within 1e-7 relative (the run
    sums its loss in float32)."""
    torch.set_num_threads(1)  # the runs' OMP_NUM_THREADS
    weights, losses = one_process_as_ranks(2)
    assert torch.equal(weights, final_weights(runs["2 ranks"]))
    recorded = [epoch["train_loss"] for epoch in record(runs["2 ranks"])["epochs"]]
    assert losses == pytest.approx(recorded, rel=1e-6)
