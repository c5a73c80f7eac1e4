"""DeepSpeed configs naming WAME: reading, checking and rewriting them, before any process group exists."""

from __future__ import annotations

import argparse
import inspect
import json
import re

import deepspeed
import pytest

import wame_dist.deepspeed.engine as initialize_module
from wame_dist import WAME
from wame_dist.deepspeed import ConfigError, initialize
from wame_dist.deepspeed.config import (
    WAME_PARAMS,
    check_batch,
    for_client_optimizer,
    names_wame,
    read_config,
    wame_arguments,
)
from wame_dist.deepspeed.registration import is_registered
from wame_dist.errors import BadInput
from wame_dist.report import results as report_results
from wame_dist.training.config import OptimizerConfig, RunConfig, parse_args
from wame_dist.training.ds_setup import run_deepspeed_config
from wame_dist.training.optimizers import RULES, optimizer_block, rule_name

WAME_BLOCK = {"type": "WAME", "params": {"lr": 2e-3, "etas": [0.2, 1.5], "zeta_bounds": [0.05, 20.0]}}


def test_same_signature_as_deepspeed_initialize():
    ours, theirs = (
        inspect.signature(initialize).parameters,
        inspect.signature(deepspeed.initialize).parameters,
    )
    assert list(ours) == list(theirs)
    assert [p.default for p in ours.values()] == [p.default for p in theirs.values()]


def test_read_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"does not exist; pass e\.g\. configs/zero2\.json"):
        read_config(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text('{"a": 1,\n "b": }')
    with pytest.raises(ConfigError, match=r"is not valid JSON \(line 2, column 7"):
        read_config(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="must hold a JSON object"):
        read_config(tmp_path / "list.json")


def test_wame_block_becomes_constructor_arguments():
    config = {"optimizer": WAME_BLOCK}
    assert names_wame(config) and names_wame({"optimizer": {"type": "wame"}})
    assert not names_wame({"optimizer": {"type": "Adam"}}) and not names_wame({})
    expected = {"lr": 2e-3, "etas": (0.2, 1.5), "zeta_bounds": (0.05, 20.0)}
    assert wame_arguments(WAME_BLOCK["params"]) == expected
    assert wame_arguments(None) == {}
    assert set(WAME_PARAMS) == set(inspect.signature(WAME).parameters) - {"params"}


def test_unknown_keys_are_listed_with_the_valid_ones():
    with pytest.raises(ConfigError) as raised:
        wame_arguments({"lr": 1e-3, "momentum": 0.9})
    assert "unknown key(s) ['momentum']" in str(raised.value)
    assert "valid keys are ['lr', 'alpha', 'etas', 'zeta_bounds'" in str(raised.value)


def test_client_optimizer_switches():
    plain = for_client_optimizer({"optimizer": WAME_BLOCK, "zero_optimization": {"stage": 2}, "x": 1})
    assert plain == {"zero_optimization": {"stage": 2}, "x": 1}
    offload = for_client_optimizer(
        {"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}}}
    )
    assert offload["zero_force_ds_cpu_optimizer"] is False


@pytest.fixture
def captured(monkeypatch):
    """What initialize() hands to deepspeed.initialize (no process group is started in this process)."""
    calls = []
    monkeypatch.setattr(
        initialize_module.deepspeed, "initialize", lambda **kw: calls.append(kw) or (None,) * 4
    )
    return calls


def test_initialize_hands_the_wame_block_to_deepspeed(captured, tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"train_batch_size": 8, "optimizer": WAME_BLOCK}))
    initialize(args=argparse.Namespace(deepspeed_config=str(path), other=1), model="model")
    (call,) = captured
    assert call["args"].deepspeed_config is None and call["args"].other == 1
    assert call["config"] == {"train_batch_size": 8, "optimizer": WAME_BLOCK} and call["optimizer"] is None
    assert is_registered()  # so DeepSpeed builds WAME from the block


def test_a_wame_instance_gets_the_offload_switch(captured):
    offload = {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}
    wame = WAME([{"params": []}])
    initialize(model="model", optimizer=wame, config={"train_batch_size": 8, **offload})
    assert captured[0]["optimizer"] is wame
    assert captured[0]["config"] == {"train_batch_size": 8, **offload, "zero_force_ds_cpu_optimizer": False}


def test_deepspeed_optimizers_pass_through_untouched(captured):
    config = {"train_batch_size": 8, "optimizer": {"type": "Adam", "params": {"lr": 1e-3}}}
    initialize(model="model", config=config)
    assert captured[0]["config"] is config and captured[0]["optimizer"] is None


def test_optimizer_in_config_and_as_argument_is_refused(captured):
    with pytest.raises(ConfigError, match="given both in the DeepSpeed config"):
        initialize(model="model", optimizer=object(), config={"optimizer": WAME_BLOCK})
    assert not captured


def test_invalid_hyperparameter_in_config_is_a_config_error(captured):
    with pytest.raises(
        ConfigError, match=r"WAME optimizer block of the DeepSpeed config: WAME: invalid alpha=1\.5"
    ):
        initialize(model="model", config={"optimizer": {"type": "WAME", "params": {"alpha": 1.5}}})
    with pytest.raises(ConfigError, match="no DeepSpeed config"):
        initialize(model="model")


def test_batch_checks():
    with pytest.raises(ConfigError, match="train_batch_size 63 cannot be split over 2 rank"):
        check_batch({"train_batch_size": 63}, 2, "c.json")
    with pytest.raises(ConfigError, match="must be a positive integer, not 0"):
        check_batch({"train_batch_size": 0}, 1, "c.json")
    with pytest.raises(ConfigError, match="train_batch_size 64 != train_micro_batch_size_per_gpu 16"):
        check_batch({"train_batch_size": 64, "train_micro_batch_size_per_gpu": 16}, 2, "c.json")
    check_batch({"train_batch_size": 64, "gradient_accumulation_steps": 2}, 4, "c.json")


def test_run_overrides(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"train_batch_size": 64, "optimizer": WAME_BLOCK}))
    run = RunConfig(deepspeed_config=str(path), precision="bf16", batch_size=32)
    config = run_deepspeed_config(run, 2)
    assert config["bf16"]["enabled"] and not config["fp16"]["enabled"] and config["train_batch_size"] == 32
    sgd = run_deepspeed_config(
        RunConfig(deepspeed_config=str(path), optimizer=OptimizerConfig("sgd", 0.05)), 1
    )
    assert sgd["optimizer"] == {"type": "SGD", "params": {"lr": 0.05, "momentum": 0.9}}
    assert sgd["zero_allow_untested_optimizer"] is True
    nesterov = OptimizerConfig("sgd", None, {"nesterov": True, "momentum": 0.8})
    block = run_deepspeed_config(RunConfig(deepspeed_config=str(path), optimizer=nesterov), 1)["optimizer"]
    assert block == {"type": "SGD", "params": {"lr": 0.01, "momentum": 0.8, "nesterov": True}}
    keras = run_deepspeed_config(
        RunConfig(deepspeed_config=str(path), optimizer=OptimizerConfig("wame_keras")), 1
    )
    assert keras["optimizer"] == {"type": "WAME", "params": {"lr": 1e-3, "variant": "keras"}}
    own_block = OptimizerConfig(None, 0.02, {"eps": 1e-9})  # no --optimizer: the config's block, overridden
    params = run_deepspeed_config(RunConfig(deepspeed_config=str(path), optimizer=own_block), 1)["optimizer"]
    assert params["params"] == {**WAME_BLOCK["params"], "lr": 0.02, "eps": 1e-9}


def test_optimizer_arguments_on_the_command_line():
    run = parse_args(["--deepspeed_config", "c.json", "--optimizer", "wame_keras", "--lr-decay", "0.001",
                      "--optimizer-params", '{"sign_source": "gradient"}'])  # fmt: skip
    assert run.optimizer == OptimizerConfig("wame_keras", None, {"sign_source": "gradient"}, 0.001)
    for bad in (["--optimizer-params", "[1]"], ["--optimizer-params", "{x"], ["--lr-decay", "-1"]):
        with pytest.raises(SystemExit) as exit_:
            parse_args(["--deepspeed_config", "c.json", *bad])
        assert exit_.value.code == 2


def test_rule_registry_and_report_names_agree():
    """report/ imports nothing else, so it keeps its own display names: they must be the registry's."""
    assert {name: rule.display for name, rule in RULES.items()} == report_results.OPTIMIZERS
    for name in RULES:  # results are keyed by the rule a block trains with
        assert rule_name(optimizer_block(name, 0.1, {"eps": 1e-9})) == name
    assert rule_name({"type": "AdamW", "params": {"lr": 1e-3}}) == "adamw"


@pytest.mark.parametrize("supported", [True, False])
def test_fp16_is_refused_early_where_deepspeed_refuses_it(supported, tmp_path, monkeypatch):
    from deepspeed.accelerator import get_accelerator

    monkeypatch.setattr(type(get_accelerator()), "is_fp16_supported", lambda self: supported)
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"train_batch_size": 64, "optimizer": WAME_BLOCK}))
    run = RunConfig(deepspeed_config=str(path), precision="fp16")
    if supported:
        assert run_deepspeed_config(run, 2)["fp16"]["enabled"]
    else:
        with pytest.raises(ConfigError, match=r"DeepSpeed does not support fp16 .* use --precision bf16"):
            run_deepspeed_config(run, 2)


def test_the_run_config_is_its_own_command_line():
    """The parser is generated from RunConfig; to_argv writes a config back as the flags that rebuild it."""
    run = RunConfig(
        deepspeed_config="c.json",
        engine="fsdp2",
        optimizer=OptimizerConfig("wame_keras", 0.01, {"sign_source": "gradient"}, 0.001),
        batch_size=64,
        seed=3,
        compile=True,
        timeout_s=30,
    )
    assert parse_args(run.to_argv()) == run
    assert RunConfig(deepspeed_config="c.json").to_argv() == ["--deepspeed_config", "c.json"]
    for make, message in (
        (lambda: RunConfig(deepspeed_config="c.json", epochs=0), "--epochs must be a whole number"),
        (lambda: RunConfig(deepspeed_config="c.json", batch_size=-4), "--batch-size must be a whole number"),
        (lambda: OptimizerConfig("adagrad"), "unknown optimizer 'adagrad' (--optimizer)"),
    ):
        with pytest.raises(BadInput, match=re.escape(message)):
            make()
