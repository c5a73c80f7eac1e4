"""launch/train.py --engine fsdp2 for real: 2 gloo ranks, digits, Table 1a at 1/8 width with dropout (as
tests/test_training_runs.py runs the DeepSpeed engine). It trains and records like the DeepSpeed engine,
resumes exactly after a stop and after a crash mid-save, and refuses what it does not do before training.
The bridges: a ZeRO run's checkpoint, exported as DCP, is resumed under FSDP2; an FSDP2 checkpoint exports to
the one-file format."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import torch
from launching import ROOT, TESTS, VENV_BIN, job_env, run, torchrun
from test_training_runs import EPOCHS, TRAIN, assert_refused, metrics, result, single, train_args

from wame_dist.data import load_splits
from wame_dist.deepspeed.checkpoint import export
from wame_dist.training.init_weights import initial_network, network_settings

pytestmark = pytest.mark.multirank

FSDP2 = ("--engine", "fsdp2")
#: The uninterrupted and the resumed run decay their rate (Keras's decay): resuming exactly needs its state.
DECAY = ("--lr-decay", "0.01")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp2")
    run(torchrun(2, TRAIN, *train_args(out, *FSDP2, *DECAY)))
    return out


def test_fsdp2_run_trains_and_records(uninterrupted):
    record = result(uninterrupted)
    assert len(metrics(uninterrupted)) == EPOCHS
    assert metrics(uninterrupted)[-1]["val_acc"] > 0.5
    assert record["key"]["optimizer"] == "wame"
    assert record["settings"]["engine"] == "fsdp2"
    assert record["settings"]["optimizer"]["lr_decay"] == 0.01
    assert record["settings"]["global_steps"] == EPOCHS * 16  # 1030 training images, batch 64
    assert len((uninterrupted / "metrics.jsonl").read_text().splitlines()) == EPOCHS
    checkpoints = uninterrupted / "checkpoints"
    assert (checkpoints / "latest").read_text() == f"epoch{EPOCHS:04d}"
    assert sorted(p.name for p in checkpoints.glob("epoch*")) == ["epoch0002", "epoch0003"]  # keep 2


def test_fsdp2_resumes_exactly_after_a_stop_and_a_crash_mid_save(uninterrupted, tmp_path):
    """Stopped after epoch 1; started again, it dies writing epoch 2's checkpoint; started once more, it
    resumes from epoch 1 and ends with the uninterrupted run's metrics."""
    out = tmp_path / "run"
    run(torchrun(2, TRAIN, *train_args(out, *FSDP2, *DECAY, epochs=1)))
    crashed = subprocess.run(
        torchrun(2, TESTS / "fault_worker.py", "crash-in-save:2", "--", *train_args(out, *FSDP2, *DECAY)),
        capture_output=True, text=True, timeout=600, env=job_env(), cwd=ROOT,
    )  # fmt: skip
    assert crashed.returncode != 0
    assert (out / "checkpoints" / "latest").read_text() == "epoch0001"
    assert not (out / "checkpoints" / "epoch0002" / "COMPLETE").exists()
    run(torchrun(2, TRAIN, *train_args(out, *FSDP2, *DECAY)))
    assert metrics(out) == metrics(uninterrupted)
    assert result(out)["settings"]["global_steps"] == result(uninterrupted)["settings"]["global_steps"]


def test_fsdp2_refuses_zero_only_requests_before_training(tmp_path):
    offload = str(ROOT / "configs" / "zero2_offload.json")
    proc = single(tmp_path / "a", *FSDP2, config=offload)
    assert_refused(proc, "--engine fsdp2 does not do zero_optimization.offload_optimizer", tmp_path / "a")
    assert "or use --engine deepspeed" in proc.stderr
    proc = single(tmp_path / "b", *FSDP2, "--precision", "fp16")
    assert_refused(
        proc,
        "--engine fsdp2 does not do fp16 (DeepSpeed's loss scaling); use --precision bf16",
        tmp_path / "b",
    )


def test_a_checkpoint_resumes_only_under_its_engine(uninterrupted, tmp_path):
    out = tmp_path / "other"
    shutil.copytree(uninterrupted / "checkpoints", out / "checkpoints")
    proc = single(out)  # the DeepSpeed engine
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert (
        "was written by --engine fsdp2, this run uses --engine deepspeed; resume it with --engine fsdp2"
        in (proc.stderr)
    )


def test_an_fsdp2_checkpoint_exports_to_one_file(uninterrupted, tmp_path):
    """The exported weights, in the plain network in this process, score the validation accuracy the run
    recorded for that epoch; WAME's state comes by parameter name."""
    out = tmp_path / "fsdp2.pt"
    run([str(VENV_BIN / "wame-dist"), "export", str(uninterrupted / "checkpoints"), "--out", str(out)])
    exported = torch.load(out, weights_only=False)
    assert exported["meta"]["tag"] == f"epoch{EPOCHS:04d}"
    assert exported["meta"]["global_steps"] == result(uninterrupted)["settings"]["global_steps"]
    network = initial_network(network_settings("digits", "table1a", 0.125), seed=0)
    network.load_state_dict(exported["model"])  # strict: every name and shape
    network.eval()
    images, labels = load_splits("digits").validation
    with torch.no_grad():
        correct = (network(images).argmax(dim=1) == labels).sum().item()
    assert correct / len(labels) == metrics(uninterrupted)[-1]["val_acc"]
    assert exported["optimizer_state"].keys() == exported["model"].keys()
    for state in exported["optimizer_state"].values():
        assert state["prev_sign"].dtype == torch.int8
        assert int(state["step"]) == exported["meta"]["global_steps"]


def test_a_zero_checkpoint_exported_as_dcp_resumes_under_fsdp2(tmp_path):
    """ZeRO-2 on 2 ranks for one epoch; `wame-dist export --dcp`; exported again as one file it equals the
    ZeRO checkpoint's export exactly; an FSDP2 run resumes from it, keeps epoch 1's record and trains on."""
    zero, converted, resumed = tmp_path / "zero", tmp_path / "dcp", tmp_path / "fsdp2"
    run(torchrun(2, TRAIN, *train_args(zero, epochs=1)))
    run([str(VENV_BIN / "wame-dist"), "export", str(zero / "checkpoints"), "--dcp", "--out", str(converted)])
    export(zero / "checkpoints", tmp_path / "zero.pt")
    run([str(VENV_BIN / "wame-dist"), "export", str(converted), "--out", str(tmp_path / "dcp.pt")])
    from_zero, from_dcp = (torch.load(tmp_path / f, weights_only=False) for f in ("zero.pt", "dcp.pt"))
    for name, weight in from_zero["model"].items():
        assert torch.equal(from_dcp["model"][name], weight), name
        for key, value in from_zero["optimizer_state"][name].items():
            got = from_dcp["optimizer_state"][name][key]
            assert got.dtype == value.dtype and torch.equal(got, value), (name, key)
    shutil.copytree(zero / "checkpoints", tmp_path / "unconverted" / "checkpoints")
    refused = single(tmp_path / "unconverted", *FSDP2)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "was written by --engine deepspeed, this run uses --engine fsdp2" in refused.stderr
    assert "or convert it: wame-dist export" in refused.stderr
    run(torchrun(2, TRAIN, *train_args(resumed, *FSDP2, "--resume-from", str(converted))))
    assert metrics(resumed)[0] == metrics(zero)[0]
    assert len(metrics(resumed)) == EPOCHS
    assert metrics(resumed)[-1]["val_acc"] > 0.5
    assert result(resumed)["settings"]["global_steps"] == EPOCHS * 16
