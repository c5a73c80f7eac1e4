"""WAME under FSDP2 (``fully_shard``) on several real processes (gloo on CPU): every implementation works on
DTensor parameters, keeps its state as DTensors sharded like the parameters, and ends where one process with
plain WAME ends on the same global batches (tolerances as for ZeRO: tests/test_deepspeed_zero.py)."""

from __future__ import annotations

import pytest
import torch
from ds_worker import STATE_KEYS, reference_run
from fsdp2_worker import IMPLEMENTATIONS, STEPS
from launching import TESTS, run, torchrun

pytestmark = pytest.mark.multirank

PARAM_TOLERANCE = 1e-5


@pytest.fixture(scope="module", params=[2, 4], ids=["2ranks", "4ranks"])
def ranks_out(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"fsdp2_{request.param}")
    run(torchrun(request.param, TESTS / "fsdp2_worker.py", str(out)), timeout=900)
    return out


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
