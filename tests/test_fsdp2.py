"""WAME under FSDP2 (``fully_shard``) on several real processes (gloo on CPU): every implementation works on
DTensor parameters, keeps its state as DTensors sharded like the parameters, and ends where one process with
plain WAME ends on the same global batches (tolerances as for ZeRO: tests/test_deepspeed_zero.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from ds_worker import STATE_KEYS, reference_run
from fsdp2_worker import IMPLEMENTATIONS, STEPS
from launching import TESTS, job_env, run, torchrun

pytestmark = pytest.mark.multirank

PARAM_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def launches(tmp_path_factory):
    """Three launches. 2 ranks: every implementation, bf16 and the misuse check, then a DCP checkpoint saved
    and resumed on 2; 4 ranks: the same training, and that checkpoint resharded to 4 (and re-saved); 1 rank:
    the 4-rank checkpoint resharded to 1."""
    outs, previous = {}, None
    for ranks, train in ((2, True), (4, True), (1, False)):
        out = tmp_path_factory.mktemp(f"fsdp2_{ranks}")
        options = [
            *(["--train"] if train else []),
            "--dcp",
            *(["--resume", str(previous)] if previous else []),
        ]
        run(torchrun(ranks, TESTS / "fsdp2_worker.py", str(out), *options), timeout=900)
        outs[ranks] = previous = out
    return outs


@pytest.fixture(params=[2, 4], ids=["2ranks", "4ranks"])
def ranks_out(request, launches):
    return launches[request.param]


@pytest.fixture(scope="module")
def reference():
    return reference_run(STEPS)


def load(out, name):
    return torch.load(out / f"{name}.pt", weights_only=False)


@pytest.mark.parametrize("implementation", list(IMPLEMENTATIONS))
def test_fsdp2_training_equals_one_process(ranks_out, implementation, reference):
    result = load(ranks_out, implementation)
    params, state = reference
    assert result["state_is_dtensor"]
    assert result["wame_steps"] == [STEPS]
    for name, expected in params.items():
        assert (result["params"][name] - expected).abs().max() <= PARAM_TOLERANCE, name
        got = result["state"][name]
        assert torch.equal(got["prev_sign"], state[name]["prev_sign"]), name
        assert torch.equal(got["zeta"], state[name]["zeta"]), name
        for key in ("z", "theta"):
            torch.testing.assert_close(got[key], state[name][key], rtol=1e-4, atol=1e-9)


def test_fsdp2_bf16_mixed_precision_trains_with_fp32_state(ranks_out):
    result = load(ranks_out, "bf16")
    for dtypes in result["dtypes"].values():
        assert dtypes == dict(zip(STATE_KEYS, (torch.int8, torch.float32, torch.float32, torch.float32)))
    losses = result["losses"]
    assert sum(losses[-5:]) < sum(losses[:5]), losses


def test_wame_built_before_fully_shard_fails_at_its_first_step(ranks_out):
    """fully_shard replaces the parameters the optimizer holds; the first step says so instead of silently
    training nothing."""
    raised = (ranks_out / "built_before_sharding.txt").read_text()
    assert "WAME was built before fully_shard" in raised
    assert "Build the optimizer after sharding" in raised


def assert_same_run(result, expected, tolerance=0.0):
    for name, value in expected["params"].items():
        assert (result["params"][name] - value).abs().max() <= tolerance, name
        got, want = result["state"][name], expected["state"][name]
        assert got["prev_sign"].dtype == torch.int8, name
        assert torch.equal(got["prev_sign"], want["prev_sign"]) and torch.equal(got["zeta"], want["zeta"]), (
            name
        )
        for key in ("z", "theta"):
            torch.testing.assert_close(got[key], want[key], rtol=1e-4 if tolerance else 0, atol=tolerance)
    assert result["wame_steps"] == expected["wame_steps"] == [STEPS]


def test_dcp_initialisation_step_changes_nothing(launches):
    """get_state_dict on a fresh WAME runs DCP's step with zero gradients and lr 0: state as if fresh."""
    fresh = load(launches[2], "fresh_after_init")
    assert fresh["wame_steps"] == [0]
    for name, state in fresh["state"].items():
        assert not state["prev_sign"].any() and not state["z"].any() and not state["theta"].any(), name
        assert torch.equal(state["zeta"], torch.ones_like(state["zeta"])), name


def test_dcp_resume_on_the_same_world_size_is_bitwise(launches):
    assert_same_run(load(launches[2], "resumed"), load(launches[2], "uninterrupted"))


@pytest.mark.parametrize("ranks", [4, 1])
def test_dcp_reshards_wame_state(launches, ranks):
    """2 -> 4 -> 1 ranks: each hop ends where the uninterrupted 2-rank run ends (another world size sums
    the gradients in another order: the ZeRO tolerances), prev_sign still int8."""
    assert_same_run(load(launches[ranks], "resumed"), load(launches[2], "uninterrupted"), PARAM_TOLERANCE)


MIXED_LIST_CHECK = textwrap.dedent(
    """
    import torch, torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor
    from wame_dist import WAME

    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:0", rank=0, world_size=1)
    mesh = init_device_mesh("cpu", (1,))
    torch.manual_seed(0)
    weights = [torch.randn(37, 5), torch.randn(11)]
    grads = [[torch.randn(37, 5), torch.randn(11)] for _ in range(4)]
    for flags in ({}, {"foreach": False, "fused": False}, {"foreach": True}, {"fused": True}):
        sharded = distribute_tensor(weights[0], mesh, [Shard(0)])
        mixed = [torch.nn.Parameter(sharded), torch.nn.Parameter(weights[1].clone())]
        plain = [torch.nn.Parameter(w.clone()) for w in weights]
        for params in (mixed, plain):
            optimizer = WAME(params, lr=1e-2, **flags)
            for step in grads:
                for p, g in zip(params, step):
                    p.grad = distribute_tensor(g, mesh, [Shard(0)]) if isinstance(p, DTensor) else g
                optimizer.step()
        assert torch.equal(mixed[0].full_tensor(), plain[0]) and torch.equal(mixed[1], plain[1]), flags
    dist.destroy_process_group()
    print("mixed ok")
    """
)


def test_a_mixed_list_of_dtensor_and_plain_parameters_steps_as_plain_tensors():
    """One optimizer over a DTensor parameter and a plain one: every implementation gives exactly what it
    gives on plain tensors (one process, a 1-rank mesh)."""
    proc = subprocess.run(
        [sys.executable, "-c", MIXED_LIST_CHECK], capture_output=True, text=True, timeout=300, env=job_env()
    )
    assert proc.returncode == 0 and "mixed ok" in proc.stdout, proc.stdout + proc.stderr
