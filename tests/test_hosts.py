"""WAME inside plain DeepSpeed, HF Trainer, Accelerate and Lightning: real packages, 2 CPU ranks (gloo).

One launch of tests/hosts_worker.py runs every route (a tiny network with two parameter groups, a few
steps); the tests read what rank 0 recorded. Every run that trains must step WAME (the engine's optimizer
chain ends in WAME, whose ``step`` equals the engine's steps), lower the loss and link WAME's state for
every parameter and key (``deepspeed.utils.safe_get_full_optimizer_state``); fp32 plain-DeepSpeed runs
must end within 1e-5 of single-process WAME on the same global batches.
"""

from __future__ import annotations

import json

import pytest
import torch
from hosts_worker import GLOBAL_BATCH, LR, STATE_KEYS, STEPS, make_net, param_groups, samples
from launching import TESTS, run, torchrun

from wame_dist import WAME
from wame_dist.cli import main as wame_dist

pytestmark = pytest.mark.multirank

DEEPSPEED_FP32 = ["zero0", "zero1", "zero2", "zero3", "zero2_offload", "zero3_offload"]
DEEPSPEED_BF16 = ["zero2_bf16", "zero3_bf16"]
PLAN = [
    ["deepspeed", {"runs": DEEPSPEED_FP32 + DEEPSPEED_BF16}],
    ["hf", {}],
    ["accelerate", {}],
    ["lightning", {}],
]
PARAM_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """The folder the 2-rank run of every route wrote (records, errors, host checkpoints)."""
    out = tmp_path_factory.mktemp("hosts")
    run(torchrun(2, TESTS / "hosts_worker.py", str(out), json.dumps(PLAN)), timeout=900)
    return out


@pytest.fixture(scope="module")
def results(launched):
    """name -> rank 0's record (a dict), or the message of the error the run raised (a str)."""
    out = launched
    found = {path.stem: torch.load(path, weights_only=False) for path in out.glob("*.pt")}
    found.update({path.stem: path.read_text() for path in out.glob("*.error")})
    return found


@pytest.fixture(scope="module")
def reference():
    """Single-process WAME, the same two groups and global batches: final parameters by name."""
    net = make_net()
    optimizer = WAME(param_groups(net), lr=LR)
    x, y = samples()
    for k in range(STEPS):
        batch = slice(k * GLOBAL_BATCH, (k + 1) * GLOBAL_BATCH)
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(net(x[batch]), y[batch]).backward()
        optimizer.step()
    return {name: p.detach().clone() for name, p in net.named_parameters()}


def full_loss(params: dict[str, torch.Tensor] | None = None) -> float:
    """The loss on all samples of the network with ``params`` (names as the host saw them: HF and Lightning
    wrap the network as ``net``), or with its initial weights."""
    net = make_net()
    if params is not None:
        net.load_state_dict({name.removeprefix("net."): value for name, value in params.items()})
    x, y = samples()
    with torch.no_grad():
        return torch.nn.functional.mse_loss(net(x), y).item()


def assert_trains_with_wame(record: dict, steps: int) -> None:
    """DeepSpeed steps WAME, as often as the engine stepped, the loss on all samples falls and every
    fragment's state is linked."""
    assert record["chain"][-1] == "WAME", record["chain"]
    assert record["wame_steps"] == [record["global_steps"]] and record["global_steps"] == steps
    assert full_loss(record["params"]) < 0.8 * full_loss()
    for name, keys in record["linked"].items():
        assert keys == {key: record["shapes"][name] for key in STATE_KEYS}, name


@pytest.mark.parametrize("name", DEEPSPEED_FP32 + DEEPSPEED_BF16)
def test_plain_deepspeed_builds_wame_from_the_config(name, results, reference):
    record = results[f"deepspeed_{name}"]
    assert_trains_with_wame(record, STEPS)
    if name in DEEPSPEED_FP32:
        for param, value in record["params"].items():
            torch.testing.assert_close(value, reference[param], rtol=0, atol=PARAM_TOLERANCE)


def test_without_register_deepspeed_refuses_and_the_check_says_what_to_do(results):
    assert results["unregistered_deepspeed"] == "AssertionError: WAME is not a supported DeepSpeed Optimizer"
    assert "call it before the engine is built" in results["unregistered_check"]
    assert "wame_dist.deepspeed.register()" in results["unregistered_check"]


def test_bad_wame_blocks_fail_at_initialize_with_the_usual_messages(results):
    assert results["deepspeed_bad_key"].startswith("ConfigError: unknown key(s) ['betas'] in the WAME")
    assert results["deepspeed_bad_value"] == (
        "ConfigError: the WAME optimizer block of the DeepSpeed config: WAME: invalid alpha=1.5; "
        "expected 0 <= alpha < 1"
    )


@pytest.mark.parametrize("name", ["hf_config", "hf_cls_and_kwargs"])
def test_hf_trainer_trains_with_wame(name, results):
    """WAME named in the DeepSpeed config, and WAME from optimizer_cls_and_kwargs (two parameter groups,
    init_state never called by HF: every fragment's state must still be linked)."""
    assert_trains_with_wame(results[name], STEPS)


def test_hf_trainer_optimizers_argument_is_stopped_with_the_fix(results):
    """transformers drops optimizers=(WAME(...), None) under DeepSpeed and builds AdamW: RequireWAME stops
    the run."""
    message = results["hf_optimizers"]
    assert message.startswith("BadInput: DeepSpeed steps DeepSpeedOptimizerWrapper -> DeepSpeedZeroOptimizer")
    assert "AdamW, not WAME" in message and "instead of optimizers=(WAME(...), None)" in message


@pytest.mark.parametrize(
    "name", ["accelerate_config", "accelerate_config_offload", "accelerate_client_offload_flag"]
)
def test_accelerate_trains_with_wame(name, results, reference):
    record = results[name]
    assert_trains_with_wame(record, STEPS)
    for param, value in record["params"].items():  # the same global batches as the reference
        torch.testing.assert_close(value, reference[param], rtol=0, atol=PARAM_TOLERANCE)


def test_accelerate_offload_swap_is_caught_with_the_fix(results):
    """Accelerate replaces a client optimizer by DeepSpeedCPUAdam under offload; require_wame says why."""
    message = results["accelerate_client_offload"]
    assert "DeepSpeedCPUAdam, not WAME" in message and '"zero_force_ds_cpu_optimizer": false' in message


@pytest.mark.parametrize(
    "name",
    ["lightning_client", "lightning_client_offload_flag", "lightning_config", "lightning_config_offload"],
)
def test_lightning_trains_with_wame(name, results):
    """WAME from configure_optimizers and named in the strategy's config (a test-only strategy subclass lifts
    Lightning's three GPU assumptions; see hosts_worker.cpu_deepspeed_strategy)."""
    assert_trains_with_wame(results[name], STEPS)


def test_lightning_offload_of_a_client_wame_is_refused_with_the_fix(results):
    message = results["lightning_client_offload"]
    assert message.startswith(
        "ZeRORuntimeException: You are using ZeRO-Offload with a client provided optimizer"
    )
    assert '<"zero_force_ds_cpu_optimizer": false>' in message


@pytest.mark.parametrize(
    "name, folder", [("hf_config", "hf_config/checkpoint-6"), ("lightning_config", "lightning_config.ckpt")]
)
def test_host_checkpoint_folders_export_and_reshard(name, folder, launched, results, tmp_path):
    """HF's checkpoint-N/ (holding global_stepN/) and Lightning's *.ckpt/ folder are DeepSpeed checkpoint
    folders: wame-dist export gives the gathered parameters and WAME's state; reshard to 1 rank too."""
    assert STEPS == 6  # the folder names above
    resharded = tmp_path / "resharded"
    assert wame_dist(["reshard", str(launched / folder), "--world-size", "1", "--out", str(resharded)]) == 0
    for source, out in ((launched / folder, tmp_path / "a.pt"), (resharded, tmp_path / "b.pt")):
        assert wame_dist(["export", str(source), "--out", str(out)]) == 0
        exported = torch.load(out, weights_only=False)
        assert exported["meta"]["global_steps"] == STEPS
        for param, value in results[name]["params"].items():
            torch.testing.assert_close(exported["model"][param], value, rtol=0, atol=0)
            assert set(STATE_KEYS) <= set(exported["optimizer_state"][param]), param
