"""``wame-dist reshard`` and ``wame-dist export`` on real DeepSpeed checkpoints (gloo on CPU).

Three launches. 2 ranks train every config, save at step 5 and go on uninterrupted to step 14. 4 ranks
load those checkpoints resharded for 4 ranks (some also into another ZeRO stage or sub-group size), go on
to step 10 and save there. 2 ranks load the 4-rank checkpoints resharded back for 2 and go on to step 14.
Every load is checked twice:

* right after loading, parameters, WAME state, steps and loss scale equal those of the saving run at the
  save step exactly (bf16 and fp16 included);
* fp32 runs go on within 1e-5 of the uninterrupted run (the ranks sum gradients in another order; no
  gradient sign differs at WAME's default lr, so prev_sign and zeta stay equal).

This file is also the launched worker: tests/ds_worker.py with two more scenarios (``save``, ``restore``) for
named configs, e.g. mixed precision and non-default layouts, which ds_worker's own scenarios do not take.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ds_worker import STATE_KEYS, Trainer, ds_config, save
from launching import VENV_BIN, job_env, run, torchrun

from wame_dist.cli import COMMANDS
from wame_dist.cli import main as wame_dist
from wame_dist.deepspeed.checkpoint import CheckpointError, consolidate, exported, read_checkpoint, reshard

pytestmark = pytest.mark.multirank

SAVED_AT, RESAVED_AT, END = 5, 10, 14  # the 2-rank save, the 4-rank save, the last step
MIXED_END = 7  # mixed-precision runs just show that they go on training
TAG = f"step{SAVED_AT}"
PARAM_TOLERANCE = 1e-5
BF16 = {"bf16": {"enabled": True}}


def with_zero(zero: str, **settings) -> dict:
    config = ds_config(zero)
    config["zero_optimization"] = {**config["zero_optimization"], **settings}
    return config


#: name -> DeepSpeed config of the saving run (the name is also the checkpoint's folder under ckpt/).
FP32 = {
    **{name: ds_config(name) for name in ("zero1", "zero2", "zero3", "zero3_offload")},
    # round-robin gradient partitioning and parameter alignment change the flat order with the world size
    "zero2_round_robin": with_zero("zero2", round_robin_gradients=True, parameter_alignment=True),
    "zero3_keras": ds_config("zero3", "keras"),  # WAME's Keras variant: its groups' settings travel too
}
MIXED = {
    # bf16 ZeRO-2 (ZeRO optimizer, bf16_ files), bf16 ZeRO-1 with fp32 accumulation (BF16_Optimizer)
    "zero2_bf16": ds_config("zero2", **BF16),
    "zero1_bf16_optimizer": ds_config("zero1", **BF16, data_types={"grad_accum_dtype": "fp32"}),
    "zero3_bf16": ds_config("zero3", **BF16),
    # fp16 with dynamic loss scaling; one step overflows (and is skipped) before the save
    "zero2_fp16": ds_config("zero2", fp16={"enabled": True, "initial_scale_power": 8}),
}
OVERFLOW_AT = {"zero2_fp16": 2}
#: DeepSpeed's safe_get_* helpers (and the param_slice_mappings it saves) ignore the round-robin order and
#: read other parameters' elements; these runs are compared on the module's parameters instead (complete on
#: every rank under ZeRO-1/2, and equal to the fp32 master weights in fp32), their state through the
#: continued runs.
ROUND_ROBIN = {"zero2_round_robin"}
#: name -> (source checkpoint, reshard options, config of the loading run) for loads on 4 ranks
ACROSS = {
    "zero1_to_zero3": ("zero1", ["--stage", "3"], ds_config("zero3")),
    "zero3_to_zero2": ("zero3", ["--stage", "2"], ds_config("zero2")),
    "zero3_sub_groups": ("zero3", ["--sub-group-size", "5000"], with_zero("zero3", sub_group_size=5000)),
    "zero1_bf16_optimizer_to_zero3": ("zero1_bf16_optimizer", ["--stage", "3"], ds_config("zero3", **BF16)),
    "zero3_bf16_to_zero1_bf16_optimizer": (
        "zero3_bf16",
        ["--stage", "1"],
        ds_config("zero1", **BF16, data_types={"grad_accum_dtype": "fp32"}),
    ),
}
SOURCE_OF = {
    **{name: name for name in {**FP32, **MIXED}},
    **{name: src for name, (src, *_) in ACROSS.items()},
}
FP32_ACROSS = [name for name in ACROSS if SOURCE_OF[name] in FP32]
MIXED_ACROSS = [name for name in ACROSS if SOURCE_OF[name] in MIXED]


# ------------------------------------------------------------------------------------------ the worker side
def scenario_save(
    out: Path, runs: dict, ckpt: str, save_at: int, snapshots=(), overflow_at: dict | None = None
) -> None:
    """Per named config: train to step ``save_at`` (the step ``overflow_at[name]`` overflows), save to
    ``ckpt/name`` and dump ``name_saved``; go on and dump ``name_straight{S}`` at each step S of
    ``snapshots``."""
    for name, config in runs.items():
        trainer = Trainer(config)
        for step in range(save_at):
            trainer.step(loss_factor=math.inf if step == (overflow_at or {}).get(name) else 1.0)
        trainer.engine.save_checkpoint(str(Path(ckpt) / name), tag=f"step{save_at}")
        save(out, f"{name}_saved", snapshot(trainer))
        for stop in snapshots:
            while trainer.engine.global_steps < stop:
                trainer.step()
            save(out, f"{name}_straight{stop}", snapshot(trainer))


def scenario_restore(out: Path, runs: dict, ckpt: str, steps: int, save_to: str | None = None) -> None:
    """Per named config: load ``ckpt/name`` (via its ``latest``) and dump ``name_restored``; go on to step
    ``steps`` and dump ``name_continued``; save there to ``save_to/name`` if given."""
    for name, config in runs.items():
        trainer = Trainer(config)
        trainer.engine.load_checkpoint(str(Path(ckpt) / name))
        # ZeRO-1/2 link the loaded state to the parameters (for the safe_get_* helpers) at the next step
        link = getattr(trainer.engine.optimizer, "_lazy_init_hp_params_optimizer_state", None)
        if link is not None:
            link()
        save(out, f"{name}_restored", snapshot(trainer))
        done = trainer.engine.global_steps
        trainer.micro_steps = done * trainer.engine.gradient_accumulation_steps()
        losses = [trainer.step() for _ in range(steps - done)]
        save(out, f"{name}_continued", {**snapshot(trainer), "losses": losses})
        if save_to:
            trainer.engine.save_checkpoint(str(Path(save_to) / name), tag=f"step{steps}")


def snapshot(trainer: Trainer) -> dict:
    """ds_worker's snapshot, the loss scale and, under ZeRO-1/2, the module's parameters."""
    engine = trainer.engine
    module = {n: p.detach().clone() for n, p in engine.module.named_parameters()}
    return {
        **trainer.snapshot(),
        "loss_scale": getattr(engine.optimizer, "cur_scale", None),
        "module": module if engine.zero_optimization_stage() < 3 else None,
    }


def launch(ranks: int, out: Path, plan: list) -> Path:
    """Runs this file as the worker on ``ranks`` ranks. The venv's bin goes first on PATH so that the ranks
    build DeepSpeed's and WAME's JIT extensions with the venv's ninja, as an activated venv does: another
    ninja version takes the shared build cache for stale and rebuilds it (minutes on this machine)."""
    env = job_env(PATH=os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", "")]))
    run(torchrun(ranks, Path(__file__), str(out), json.dumps(plan)), timeout=900, env=env)
    return out


# ------------------------------------------------------------------------------------------- the test side
def reshard_cli(source: Path, out: Path, world_size: int, *options: str) -> None:
    argv = ["reshard", str(source), "--world-size", str(world_size), "--out", str(out), *options]
    assert wame_dist(argv) == 0


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """2 ranks save every config at step 5; fp32 runs go on to step 14. The digests of the saved files are
    kept in ``digests.json`` to check later that no tool changed them."""
    out = tmp_path_factory.mktemp("save2")
    ckpt = str(out / "ckpt")
    plan = [
        ["save", {"runs": FP32, "ckpt": ckpt, "save_at": SAVED_AT, "snapshots": [RESAVED_AT, END]}],
        ["save", {"runs": MIXED, "ckpt": ckpt, "save_at": SAVED_AT, "overflow_at": OVERFLOW_AT}],
    ]
    launch(2, out, plan)
    (out / "digests.json").write_text(json.dumps(digests(out / "ckpt")))
    return out


@pytest.fixture(scope="module")
def four_ranks(two_ranks, tmp_path_factory):
    """The 2-rank checkpoints resharded for 4 ranks (some into other stages) and loaded on 4 ranks; the fp32
    runs go on to step 10 and save there."""
    out = tmp_path_factory.mktemp("load4")
    resharded = out / "resharded"
    for name in {**FP32, **MIXED}:
        reshard_cli(two_ranks / "ckpt" / name, resharded / name, 4)
    for name, (source, options, _) in ACROSS.items():
        reshard_cli(two_ranks / "ckpt" / source, resharded / name, 4, *options)
    across = {name: config for name, (_, _, config) in ACROSS.items()}
    fp32 = {**FP32, **{name: across[name] for name in FP32_ACROSS}}
    mixed = {**MIXED, **{name: across[name] for name in MIXED_ACROSS}}
    plan = [
        [
            "restore",
            {"runs": fp32, "ckpt": str(resharded), "steps": RESAVED_AT, "save_to": str(out / "ckpt")},
        ],
        ["restore", {"runs": mixed, "ckpt": str(resharded), "steps": MIXED_END}],
    ]
    return launch(4, out, plan)


@pytest.fixture(scope="module")
def back_to_two(four_ranks, tmp_path_factory):
    """The 4-rank fp32 checkpoints of step 10 resharded for 2 ranks, loaded there, run on to step 14."""
    out = tmp_path_factory.mktemp("load2")
    for name in FP32:
        reshard_cli(four_ranks / "ckpt" / name, out / "resharded" / name, 2)
    return launch(2, out, [["restore", {"runs": FP32, "ckpt": str(out / "resharded"), "steps": END}]])


def load(directory: Path, name: str) -> dict:
    return torch.load(directory / f"{name}.pt", weights_only=False)


def assert_same_training_state(got: dict, expected: dict, round_robin: bool = False) -> None:
    """Exactly the same parameters, WAME state (prev_sign int8), steps and loss scale."""
    assert got["params"].keys() == expected["params"].keys()
    for name, param in expected["params"].items():
        if round_robin:
            assert torch.equal(got["module"][name], expected["module"][name]), name
            continue
        assert torch.equal(got["params"][name], param), name
        for key in STATE_KEYS:
            value, want = got["state"][name][key], expected["state"][name][key]
            assert value.dtype == want.dtype and torch.equal(value, want), (name, key)
    for key in ("wame_steps", "global_steps", "skipped_steps"):
        assert got[key] == expected[key], key
    if None not in (got["loss_scale"], expected["loss_scale"]):  # BF16_Optimizer has no loss scale
        assert got["loss_scale"] == expected["loss_scale"]


def assert_continues_like(got: dict, expected: dict, steps: int, round_robin: bool = False) -> None:
    """Within the tolerance of a different number of ranks of the uninterrupted run."""
    for name, param in expected["params"].items():
        if round_robin:
            assert (got["module"][name] - expected["module"][name]).abs().max() <= PARAM_TOLERANCE, name
            continue
        assert (got["params"][name] - param).abs().max() <= PARAM_TOLERANCE, name
        state, want = got["state"][name], expected["state"][name]
        assert torch.equal(state["prev_sign"].to(torch.int8), want["prev_sign"].to(torch.int8)), name
        assert torch.equal(state["zeta"], want["zeta"]), name
        for key in ("z", "theta"):
            torch.testing.assert_close(state[key], want[key], rtol=1e-4, atol=1e-9)
    assert got["wame_steps"] == expected["wame_steps"] == [steps]
    assert got["global_steps"] == expected["global_steps"] == steps


@pytest.mark.parametrize("name", [*FP32, *MIXED, *ACROSS])
def test_two_to_four_ranks_loads_the_saved_state(name, two_ranks, four_ranks):
    saved = load(two_ranks, f"{SOURCE_OF[name]}_saved")
    assert saved["world_size"] == 2 and saved["global_steps"] == SAVED_AT
    restored = load(four_ranks, f"{name}_restored")
    assert restored["world_size"] == 4
    assert_same_training_state(restored, saved, name in ROUND_ROBIN)
    if name == "zero2_fp16":  # the overflowing step was skipped: WAME stepped one time less
        assert saved["skipped_steps"] == 1 and saved["wame_steps"] == [SAVED_AT - 1]


@pytest.mark.parametrize("name", [*FP32, *FP32_ACROSS])
def test_two_to_four_ranks_continues_like_the_uninterrupted_run(name, two_ranks, four_ranks):
    straight = load(two_ranks, f"{SOURCE_OF[name]}_straight{RESAVED_AT}")
    assert_continues_like(load(four_ranks, f"{name}_continued"), straight, RESAVED_AT, name in ROUND_ROBIN)


@pytest.mark.parametrize("name", [*MIXED, *MIXED_ACROSS])
def test_mixed_precision_runs_go_on_training(name, four_ranks):
    continued = load(four_ranks, f"{name}_continued")
    assert continued["global_steps"] == MIXED_END and len(continued["losses"]) == MIXED_END - SAVED_AT
    assert all(math.isfinite(loss) for loss in continued["losses"])
    assert all(torch.isfinite(p).all() for p in continued["params"].values())


@pytest.mark.parametrize("name", list(FP32))
def test_four_to_two_ranks(name, two_ranks, four_ranks, back_to_two):
    restored = load(back_to_two, f"{name}_restored")
    assert (restored["world_size"], restored["global_steps"]) == (2, RESAVED_AT)
    assert_same_training_state(restored, load(four_ranks, f"{name}_continued"), name in ROUND_ROBIN)
    straight = load(two_ranks, f"{name}_straight{END}")
    assert_continues_like(load(back_to_two, f"{name}_continued"), straight, END, name in ROUND_ROBIN)


def test_resharded_files_are_laid_out_like_deepspeeds_own(two_ranks, four_ranks, back_to_two):
    """Resharded checkpoints have the files, keys, shapes and dtypes of those DeepSpeed saves itself on that
    many ranks (2 -> 4 against DeepSpeed's 4-rank save, 4 -> 2 against its 2-rank save)."""
    for name in FP32:
        for own, ours in (
            (four_ranks / "ckpt" / name / f"step{RESAVED_AT}", four_ranks / "resharded" / name / TAG),
            (two_ranks / "ckpt" / name / TAG, back_to_two / "resharded" / name / f"step{RESAVED_AT}"),
        ):
            assert sorted(p.name for p in own.iterdir()) == sorted(p.name for p in ours.iterdir())
            for file in own.iterdir():
                theirs, mine = (torch.load(path, weights_only=False) for path in (file, ours / file.name))
                if name in ROUND_ROBIN and "optimizer_state_dict" in theirs:  # see ROUND_ROBIN
                    theirs["optimizer_state_dict"].pop("param_slice_mappings")
                    mine["optimizer_state_dict"].pop("param_slice_mappings")
                assert structure(theirs) == structure(mine), (name, file.name)


def structure(value):
    """Keys, shapes and dtypes, and the types of other values."""
    if isinstance(value, dict):
        return {key: structure(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [structure(item) for item in value]
    if torch.is_tensor(value):
        return (tuple(value.shape), value.dtype)
    return type(value).__name__


# ------------------------------------------------------------------------------------------------- export
@pytest.mark.parametrize("name", [*FP32, *MIXED])
def test_export_equals_the_gathered_state(name, two_ranks, tmp_path):
    out = tmp_path / "export.pt"
    assert wame_dist(["export", str(two_ranks / "ckpt" / name), "--out", str(out)]) == 0
    exported_file = torch.load(out, weights_only=False)
    saved = load(two_ranks, f"{name}_saved")
    assert exported_file["model"].keys() == saved["params"].keys()
    for param_name, param in saved["params"].items():
        weight = exported_file["model"][param_name]
        want = saved["module"][param_name] if name in ROUND_ROBIN else param
        assert weight.dtype == torch.float32 and not weight.requires_grad and torch.equal(weight, want)
        state = exported_file["optimizer_state"][param_name]
        assert set(state) == {"step", *STATE_KEYS}
        assert state["prev_sign"].dtype == torch.int8
        for key in STATE_KEYS:
            assert state[key].shape == param.shape, (param_name, key)
            if name not in ROUND_ROBIN:
                assert torch.equal(state[key], saved["state"][param_name][key]), (param_name, key)
        assert state["step"].dim() == 0 and [int(state["step"])] == saved["wame_steps"]
    meta = exported_file["meta"]
    assert (meta["tag"], meta["world_size"], meta["global_steps"]) == (TAG, 2, SAVED_AT)
    assert meta["zero_stage"] == read_checkpoint(two_ranks / "ckpt" / name).stage
    assert [n for group in meta["param_groups"] for n in group["params"]] == list(saved["params"])


def test_export_does_not_depend_on_the_layout(two_ranks, four_ranks, back_to_two):
    """Exporting any resharded checkpoint gives exactly what exporting its source gives."""
    pairs = [
        (two_ranks / "ckpt" / source, four_ranks / "resharded" / name) for name, source in SOURCE_OF.items()
    ]
    pairs += [(four_ranks / "ckpt" / name, back_to_two / "resharded" / name) for name in FP32]
    for source, resharded in pairs:
        want = exported(consolidate(read_checkpoint(source)))
        got = exported(consolidate(read_checkpoint(resharded)))
        for part in ("model", "optimizer_state"):
            assert_equal_nested(got[part], want[part], f"{resharded}/{part}")


def assert_equal_nested(got, want, where: str) -> None:
    if isinstance(want, dict):
        assert got.keys() == want.keys(), where
        for key in want:
            assert_equal_nested(got[key], want[key], f"{where}/{key}")
    else:
        assert got.dtype == want.dtype and torch.equal(got, want), where


# ------------------------------------------------------------------------------------ errors and atomicity
@pytest.fixture
def checkpoint(two_ranks, tmp_path) -> Path:
    """A private copy of the 2-rank ZeRO-1 checkpoint, free to damage."""
    return Path(shutil.copytree(two_ranks / "ckpt" / "zero1", tmp_path / "zero1"))


def edit(path: Path, change) -> None:
    """Applies ``change`` to the dict saved in ``path``."""
    loaded = torch.load(path, weights_only=False)
    change(loaded)
    torch.save(loaded, path)


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    """``wame-dist ARGV``'s exit status and what it wrote to stderr."""
    status = wame_dist(list(argv))
    return status, capsys.readouterr().err


def test_commands_are_registered(capsys):
    assert {"reshard", "export"} <= set(COMMANDS)
    for command in ("reshard", "export"):
        assert wame_dist([command, "--help"]) == 0
        assert "CHECKPOINT_DIR" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda ckpt: shutil.rmtree(ckpt), "does not exist"),
        (lambda ckpt: (ckpt / "latest").unlink(), "no 'latest' file"),
        (lambda ckpt: (ckpt / "latest").write_text("step99"), "tag 'step99' has no folder"),
        (
            lambda ckpt: [f.unlink() for f in (ckpt / TAG).glob("*optim_states.pt")],
            "no ZeRO optimizer states",
        ),
        (lambda ckpt: (ckpt / TAG / "mp_rank_00_model_states.pt").unlink(), "not a DeepSpeed checkpoint"),
        (lambda ckpt: (ckpt / TAG / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink(), "incomplete"),
        (
            lambda ckpt: edit(
                ckpt / TAG / "zero_pp_rank_0_mp_rank_00_optim_states.pt",
                lambda sd: sd["optimizer_state_dict"].update(base_optimizer_state=[{}]),
            ),
            "elastic ZeRO checkpoint",
        ),
        (
            lambda ckpt: edit(
                ckpt / TAG / "mp_rank_00_model_states.pt", lambda sd: sd.update(mp_world_size=2)
            ),
            "tensor or pipeline parallelism",
        ),
        (
            lambda ckpt: shutil.copy(
                ckpt / TAG / "mp_rank_00_model_states.pt", ckpt / TAG / "mp_rank_01_model_states.pt"
            ),
            "tensor-parallel checkpoints are not supported",
        ),
        (
            lambda ckpt: (ckpt / TAG / "layer_0_expert_0_mp_rank_00_model_states.pt").write_bytes(b""),
            "mixture-of-experts",
        ),
        (lambda ckpt: (ckpt / TAG / "zero").mkdir(), "universal checkpoint"),
        (
            lambda ckpt: edit(
                ckpt / TAG / "mp_rank_00_model_states.pt",
                lambda sd: sd["module"].update(frozen=torch.zeros(3)),
            ),
            "frozen",
        ),
        (
            lambda ckpt: edit(
                ckpt / TAG / "zero_pp_rank_0_mp_rank_00_optim_states.pt",
                lambda sd: sd.update(optimizer_state_dict={"some_other_format": 1}),
            ),
            "unknown ZeRO optimizer layout",
        ),
    ],
    ids=[
        "missing-dir",
        "no-latest",
        "missing-tag",
        "stage0",
        "no-model-states",
        "missing-rank",
        "elastic",
        "model-parallel",
        "tensor-parallel-files",
        "moe",
        "universal",
        "frozen",
        "unknown-layout",
    ],
)
def test_bad_checkpoints_are_refused_clearly(damage, message, checkpoint, tmp_path, capsys):
    damage(checkpoint)
    for argv in (
        ["reshard", str(checkpoint), "--world-size", "4", "--out", str(tmp_path / "out")],
        ["export", str(checkpoint), "--out", str(tmp_path / "out.pt")],
    ):
        status, err = run_cli(capsys, *argv)
        assert status == 2 and message in err, err
        assert not (tmp_path / "out").exists() and not (tmp_path / "out.pt").exists()


def test_a_tag_folder_given_as_checkpoint_dir_is_explained(checkpoint, tmp_path, capsys):
    status, err = run_cli(capsys, "export", str(checkpoint / TAG), "--out", str(tmp_path / "out.pt"))
    assert status == 2 and f"pass its parent {str(checkpoint)!r} with --tag {TAG}" in err


@pytest.mark.parametrize("world_size", ["0", "-2", "two"])
def test_bad_world_sizes_are_refused(world_size, checkpoint, tmp_path, capsys):
    status, err = run_cli(
        capsys, "reshard", str(checkpoint), "--world-size", world_size, "--out", str(tmp_path / "out")
    )
    assert status == 2 and "--world-size" in err and not (tmp_path / "out").exists()


def test_state_fp32_is_refused_where_it_means_nothing(checkpoint, tmp_path, capsys):
    """``--state-fp32`` widens the state of a file export; with --dcp it is a usage error, before reading."""
    out = tmp_path / "out"
    status, err = run_cli(capsys, "export", str(checkpoint), "--out", str(out), "--dcp", "--state-fp32")
    assert status == 2 and "--state-fp32 writes a file" in err and not out.exists()
    status, _ = run_cli(capsys, "export", str(checkpoint), "--out", str(tmp_path / "a.pt"), "--state-fp32")
    assert status == 0 and torch.load(tmp_path / "a.pt", weights_only=False)["meta"]["state_fp32"] is True


def test_an_existing_output_is_left_alone(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    status, err = run_cli(capsys, "reshard", str(checkpoint), "--world-size", "4", "--out", str(out))
    assert status == 2 and "already exists" in err
    assert [p.name for p in out.iterdir()] == ["mine.txt"] and (out / "mine.txt").read_text() == "keep me"
    status, err = run_cli(capsys, "export", str(checkpoint), "--out", str(out / "mine.txt"))
    assert status == 2 and "already exists" in err and (out / "mine.txt").read_text() == "keep me"
    status, err = run_cli(
        capsys, "reshard", str(checkpoint), "--world-size", "4", "--out", str(checkpoint / "inside")
    )
    assert status == 2 and "inside the source checkpoint" in err and not (checkpoint / "inside").exists()


def test_a_failure_while_writing_leaves_no_output(checkpoint, tmp_path, monkeypatch):
    original, calls = torch.save, []

    def failing_save(obj, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        original(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        reshard(checkpoint, tmp_path / "out", 4)
    assert list(tmp_path.iterdir()) == [checkpoint]


def test_a_killed_reshard_leaves_nothing_that_looks_like_a_checkpoint(checkpoint, tmp_path):
    """The process dies (no clean-up runs) after writing two files: no OUT_DIR, and the temporary folder
    left behind has no 'latest', so neither looks like a checkpoint."""
    out = tmp_path / "out"
    script = (
        "import os, sys, torch\n"
        "original, calls = torch.save, []\n"
        "def dying_save(*args, **kwargs):\n"
        "    original(*args, **kwargs)\n"
        "    calls.append(1)\n"
        "    if len(calls) == 2:\n"
        "        os._exit(9)\n"
        "torch.save = dying_save\n"
        "from wame_dist.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    argv = ["reshard", str(checkpoint), "--world-size", "4", "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, "-c", script, *argv], env=job_env(), capture_output=True, timeout=300
    )
    assert proc.returncode == 9
    assert not out.exists()
    leftovers = [p for p in tmp_path.iterdir() if p != checkpoint]
    assert [p.name.startswith(".out.incomplete-") for p in leftovers] == [True]
    assert not (leftovers[0] / "latest").exists()


@pytest.mark.parametrize("world_size", [1, 3])
def test_any_world_size_and_an_explicit_tag(world_size, two_ranks, tmp_path):
    """Resharding to 1 or 3 ranks (a group length that does not divide) and back keeps every value."""
    for name in ("zero2", "zero3"):
        source = two_ranks / "ckpt" / name
        reshard_cli(source, tmp_path / name, world_size, "--tag", TAG)
        assert read_checkpoint(tmp_path / name).world_size == world_size
        reshard_cli(tmp_path / name, tmp_path / f"{name}_back", 2, "--tag", TAG)
        want = exported(consolidate(read_checkpoint(source)))
        for resharded in (tmp_path / name, tmp_path / f"{name}_back"):
            got = exported(consolidate(read_checkpoint(resharded, TAG)))
            for part in ("model", "optimizer_state"):
                assert_equal_nested(got[part], want[part], f"{resharded}/{part}")


def test_the_sources_are_never_modified(two_ranks, four_ranks):
    """The 2-rank checkpoints, resharded and exported by the tests above, hold the bytes DeepSpeed wrote."""
    assert digests(two_ranks / "ckpt") == json.loads((two_ranks / "digests.json").read_text())


def digests(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_library_errors_are_bad_input(checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match="at least 1"):
        reshard(checkpoint, tmp_path / "out", 0)
    with pytest.raises(CheckpointError, match="ZeRO stage must be 1, 2 or 3"):
        reshard(checkpoint, tmp_path / "out", 2, stage=0)


if __name__ == "__main__":
    import ds_worker

    ds_worker.SCENARIOS.update(save=scenario_save, restore=scenario_restore)
    torch.set_num_threads(1)  # several ranks share two cores (as in ds_worker)
    ds_worker.main(sys.argv[1:])
