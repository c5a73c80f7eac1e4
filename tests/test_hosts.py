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
from hosts_worker import GLOBAL_BATCH, LR, RESUME_STEPS, STATE_KEYS, STEPS, make_net, param_groups, samples
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
HOST_CHECKPOINTS = {
    "accelerate": "accelerate_config.state",
    "hf": f"hf_config/checkpoint-{STEPS}",
    "lightning": "lightning_config.ckpt",
}
#: What the hosts (accelerate 1, transformers 5) write beside DeepSpeed's files, on 2 ranks.
HOST_FILES = {
    "accelerate": ["random_states_0.pkl", "random_states_1.pkl"],
    "hf": [
        "model.safetensors",
        "rng_state_0.pth",
        "rng_state_1.pth",
        "trainer_state.json",
        "training_args.bin",
    ],
    "lightning": [],
}


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
def resumed(launched, tmp_path_factory):
    """The 2-rank run's Accelerate, HF and Lightning checkpoints resharded to 1 rank by ``wame-dist reshard``
    and resumed through the hosts by one 1-rank launch: host -> ``{"start": ..., "end": ...}`` (see
    ``hosts_worker.scenario_resume``)."""
    out = tmp_path_factory.mktemp("resumed")
    options = {}
    for host, folder in HOST_CHECKPOINTS.items():
        options[host] = target = str(out / f"{host}_ws1")
        assert wame_dist(["reshard", str(launched / folder), "--world-size", "1", "--out", target]) == 0
    run(torchrun(1, TESTS / "hosts_worker.py", str(out), json.dumps([["resume", options]])), timeout=600)
    return {host: torch.load(out / f"{host}_resumed.pt", weights_only=False) for host in HOST_CHECKPOINTS}


def single_process(steps: int) -> dict[str, torch.Tensor]:
    """Single-process WAME, the same two groups and global batches, ``steps`` steps: parameters by name."""
    net = make_net()
    optimizer = WAME(param_groups(net), lr=LR)
    x, y = samples()
    for k in range(steps):
        batch = slice(k * GLOBAL_BATCH, (k + 1) * GLOBAL_BATCH)
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(net(x[batch]), y[batch]).backward()
        optimizer.step()
    return {name: p.detach().clone() for name, p in net.named_parameters()}


@pytest.fixture(scope="module")
def reference():
    """:func:`single_process` after STEPS steps."""
    return single_process(STEPS)


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
    assert results["deepspeed_bad_key"].startswith("ConfigError: unknown key(s) ['momentum'] in the WAME")
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


@pytest.mark.parametrize("host", HOST_CHECKPOINTS)
def test_host_checkpoint_folders_export_and_reshard(host, launched, results, tmp_path):
    """HF's checkpoint-N/ (holding global_stepN/) and Lightning's *.ckpt/ folder are DeepSpeed checkpoint
    folders: wame-dist export gives the gathered parameters and WAME's state; reshard to 1 rank too, and
    carries the host's own files (HF's trainer_state.json, rng_state_{rank}.pth...) unchanged, DeepSpeed's
    recovery scripts not."""
    source, resharded = launched / HOST_CHECKPOINTS[host], tmp_path / "resharded"
    assert wame_dist(["reshard", str(source), "--world-size", "1", "--out", str(resharded)]) == 0
    tag = (source / "latest").read_text()
    own = {"latest", tag, "zero_to_fp32.py", "zero_to_torch.py"}
    host_files = sorted(path.name for path in source.iterdir() if path.name not in own)
    assert host_files == HOST_FILES[host]
    assert sorted(path.name for path in resharded.iterdir()) == sorted([*host_files, "latest", tag])
    for name in host_files:
        assert (resharded / name).read_bytes() == (source / name).read_bytes(), name
    for folder, out in ((source, tmp_path / "a.pt"), (resharded, tmp_path / "b.pt")):
        assert wame_dist(["export", str(folder), "--out", str(out)]) == 0
        exported = torch.load(out, weights_only=False)
        assert exported["meta"]["global_steps"] == STEPS
        for param, value in results[f"{host}_config"]["params"].items():
            torch.testing.assert_close(exported["model"][param], value, rtol=0, atol=0)
            assert set(STATE_KEYS) <= set(exported["optimizer_state"][param]), param


@pytest.mark.parametrize("host", HOST_CHECKPOINTS)
def test_hosts_resume_a_resharded_checkpoint_on_another_world_size(host, launched, resumed, tmp_path):
    """2 ranks -> ``wame-dist reshard --world-size 1`` -> Accelerate ``load_state``, HF
    ``train(resume_from_checkpoint=...)``, Lightning ``fit(ckpt_path=...)`` on 1 rank: the engine holds
    exactly the saved weights and WAME's step at the saved step, and trains on to RESUME_STEPS."""
    out = tmp_path / "source.pt"
    assert wame_dist(["export", str(launched / HOST_CHECKPOINTS[host]), "--out", str(out)]) == 0
    saved = torch.load(out, weights_only=False)["model"]
    start, end = resumed[host]["start"], resumed[host]["end"]
    assert start["global_steps"] == STEPS and start["wame_steps"] == [STEPS]
    assert start["params"].keys() == saved.keys()
    for param, value in start["params"].items():
        torch.testing.assert_close(value, saved[param], rtol=0, atol=0)
    assert_trains_with_wame(end, RESUME_STEPS)


@pytest.mark.parametrize("host", ["hf", "lightning"])
def test_hf_and_lightning_go_on_from_the_saved_step(host, resumed):
    """The host's own step counter resumes at the checkpoint's step (HF: from the trainer_state.json that
    reshard carried; Lightning: from its client state) and WAME steps once per host step."""
    start, end = resumed[host]["start"], resumed[host]["end"]
    assert start["host_step"] == STEPS
    assert end["host_step"] == end["global_steps"] == RESUME_STEPS and end["wame_steps"] == [RESUME_STEPS]


def test_resumed_accelerate_run_continues_like_one_process(resumed):
    """Accelerate on 1 rank after the reshard, on global batches STEPS..RESUME_STEPS-1, ends within 1e-5 of
    single-process WAME run for RESUME_STEPS steps from the start."""
    want = single_process(RESUME_STEPS)
    for param, value in resumed["accelerate"]["end"]["params"].items():
        torch.testing.assert_close(value, want[param], rtol=0, atol=PARAM_TOLERANCE)
