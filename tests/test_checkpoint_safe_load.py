"""Checkpoint files are read without running code from them: a malicious pickle is refused, nothing runs.

The files here have DeepSpeed's names but are written by the test; that real DeepSpeed checkpoints of every
ZeRO stage and precision pass the allow-list is shown by tests/test_deepspeed_checkpoint.py, whose reshard
and export calls read them the same way.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from wame_dist.cli import main as wame_dist
from wame_dist.deepspeed.checkpoint import safe_load
from wame_dist.errors import BadInput
from wame_dist.training.checkpoints import check_compatible
from wame_dist.training.config import RunConfig

TAG = "epoch0001"


class WritesAFile:
    """Unpickling this runs ``touch MARKER``: what a malicious checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def fake_checkpoint(root: Path, marker: Path, poisoned: str) -> Path:
    """A checkpoint directory with DeepSpeed's file names; the file ``poisoned`` carries the payload."""
    folder = root / TAG
    folder.mkdir(parents=True)
    (root / "latest").write_text(TAG)
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"):
        payload = {"module": {"w": torch.zeros(2)}, "dp_world_size": 1}
        if name == poisoned:
            payload["extra"] = WritesAFile(marker)
        torch.save(payload, folder / name)
    return root


@pytest.mark.parametrize("command", ["reshard", "export"])
def test_cli_refuses_a_malicious_checkpoint_without_running_it(command, tmp_path, capsys):
    marker = tmp_path / "pwned"
    root = fake_checkpoint(tmp_path / "ckpt", marker, "mp_rank_00_model_states.pt")
    out = tmp_path / "out"
    argv = [command, str(root), "--out", str(out)] + (["--world-size", "2"] if command == "reshard" else [])
    assert wame_dist(argv) == 2
    err = capsys.readouterr().err
    assert "posix.system" in err and "could run code" in err and "--trust-checkpoint" in err, err
    assert not marker.exists() and not out.exists()


def test_trust_checkpoint_reads_with_full_unpickling(tmp_path, capsys):
    """The explicit flag is what it says: the file is unpickled fully (here, running its payload)."""
    marker = tmp_path / "pwned"
    root = fake_checkpoint(tmp_path / "ckpt", marker, "mp_rank_00_model_states.pt")
    wame_dist(["export", str(root), "--out", str(tmp_path / "out.pt"), "--trust-checkpoint"])
    assert marker.exists()
    assert "could run code" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "poisoned", ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"]
)
def test_resuming_refuses_a_checkpoint_with_any_malicious_file(poisoned, tmp_path):
    """launch/train.py's compatibility check scans every file engine.load_checkpoint would unpickle."""
    marker = tmp_path / "pwned"
    root = fake_checkpoint(tmp_path / "ckpt", marker, poisoned)
    with pytest.raises(BadInput, match=r"holds posix\.system, .* pass --trust-checkpoint"):
        check_compatible(root / TAG, RunConfig(deepspeed_config="c.json"), 1)
    assert not marker.exists()


def test_the_allow_list_holds_only_what_deepspeed_pickles(tmp_path):
    """Plain data and the allowed DeepSpeed types load; the allow-list is the one place that names them."""
    from deepspeed.runtime.zero.config import ZeroStageEnum

    path = tmp_path / "states.pt"
    torch.save({"stage": ZeroStageEnum.gradients, "t": torch.ones(2), "run": {"seed": 3}}, path)
    assert safe_load.untrusted_types(path) == []
    loaded = safe_load.load(path)
    assert loaded["stage"] is ZeroStageEnum.gradients and loaded["run"] == {"seed": 3}
    torch.save({"bad": WritesAFile(tmp_path / "pwned")}, path)
    assert safe_load.untrusted_types(path) == ["posix.system"]
