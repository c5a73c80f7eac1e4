"""The paper's protocol end to end on the digits data (the CI-sized study), and its pieces."""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.synchronize
import signal
import subprocess
import time
from pathlib import Path

import pytest
from launching import ROOT, VENV_BIN, job_env

from wame_dist.errors import BadInput
from wame_dist.experiment.plan import final_runs
from wame_dist.experiment.records import StudyRecords
from wame_dist.experiment.runs import RunSpec, execute, train_command, write_init_weights
from wame_dist.experiment.study import load_study, make_study
from wame_dist.training.optimizers import DEFAULT_LR

OPTIMIZERS = ("sgd", "rmsprop", "adam", "wame")
TUNED = ("sgd", "wame")
CI_STUDY = {
    "dataset": "digits",
    "model": "table1a",
    "width": 0.125,
    "seeds": 2,
    "epochs": 2,
    "batch_size": 64,
    # two rules tuned, two at their documented rates (half the tuning runs: the suite's time budget)
    "tune": {"grid": {name: [1e-3, 1e-2] for name in TUNED}, "seeds": 1, "epochs": 1},
    "deepspeed_config": "configs/zero1.json",
}


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory) -> Path:
    """The 2-seed x 4-optimizer x 2-epoch study, tuned on a 2-rate grid, run by `wame-dist study`."""
    out = tmp_path_factory.mktemp("study")
    (out / "study.json").write_text(json.dumps(CI_STUDY))
    proc = subprocess.run(
        [str(VENV_BIN / "wame-dist"), "study", str(out / "study.json"), "--out", str(out), "--parallel", "2"],
        capture_output=True, text=True, timeout=1200, env=job_env(), cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return out


def test_study_records_every_run(study_dir):
    records = StudyRecords(study_dir).records()
    lines = (study_dir / "results.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == records  # the results file: the records' union
    assert sorted(p.name for p in (study_dir / "records").iterdir()) == [
        f"{p.name}.json" for p in sorted((study_dir / "runs").iterdir())
    ]  # one record file per run, named as its folder
    final = [r for r in records if r["settings"]["role"] == "final"]
    tune = [r for r in records if r["settings"]["role"] == "tune"]
    assert len(final) == 2 * 4 and len(tune) == len(TUNED) * 2
    assert {(r["key"]["optimizer"], r["key"]["seed"]) for r in final} == {
        (o, s) for o in OPTIMIZERS for s in (0, 1)
    }
    for r in final:
        assert len(r["epochs"]) == 2 and 1 <= r["best_epoch"] <= 2
        assert set(r["epochs"][0]) == {"epoch", "train_loss", "val_acc", "test_acc", "wall_s"}


def test_every_optimizer_of_a_seed_starts_from_the_same_weights(study_dir):
    final = [r for r in StudyRecords(study_dir).records() if r["settings"]["role"] == "final"]
    for seed in (0, 1):
        hashes = {r["init_hash"] for r in final if r["key"]["seed"] == seed}
        assert len(hashes) == 1
    assert len({r["init_hash"] for r in final}) == 2


def test_tuned_rates_are_chosen_on_validation_and_used(study_dir):
    tuned = json.loads((study_dir / "tuned_lr.json").read_text())
    final = [r for r in StudyRecords(study_dir).records() if r["settings"]["role"] == "final"]
    for name in TUNED:
        scores = tuned["mean_best_val_acc"][name]
        assert tuned["chosen"][name] == max((1e-3, 1e-2), key=lambda lr: scores[repr(lr)])
        assert {r["key"]["lr"] for r in final if r["key"]["optimizer"] == name} == {tuned["chosen"][name]}
    assert tuned["on_grid_edge"] == list(TUNED)  # a grid of two rates has no inside
    for name in set(OPTIMIZERS) - set(TUNED):  # no grid: the documented rate
        assert {r["key"]["lr"] for r in final if r["key"]["optimizer"] == name} == {DEFAULT_LR[name]}


def test_report_is_written(study_dir):
    table = (study_dir / "table2.md").read_text()
    for display in ("SGD", "RMSprop", "Adam", "WAME"):
        assert f"| {display} |" in table
    assert (study_dir / "figure1_digits_table1a.png").stat().st_size > 10_000
    assert (
        "p-value" in (study_dir / "friedman.md").read_text()
        or "p =" in (study_dir / "friedman.md").read_text()
    )


def test_rerunning_a_finished_study_runs_nothing(study_dir):
    before = (study_dir / "results.jsonl").read_text()
    started = time.monotonic()
    proc = subprocess.run(
        [str(VENV_BIN / "wame-dist"), "study", str(study_dir / "study.json"), "--out", str(study_dir)],
        capture_output=True, text=True, timeout=300, env=job_env(), cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert time.monotonic() - started < 60
    assert (study_dir / "results.jsonl").read_text() == before


def test_a_killed_run_resumes_to_the_identical_result(tmp_path):
    study = make_study({**CI_STUDY, "epochs": 3})
    spec = RunSpec("wame", 0, 1e-3, "final")
    write_init_weights(study, tmp_path / "straight", 0)
    write_init_weights(study, tmp_path / "killed", 0)
    straight = execute(study, spec, tmp_path / "straight")

    killed = tmp_path / "killed"
    run_dir = killed / "runs" / spec.name(study)
    run_dir.mkdir(parents=True)
    proc = subprocess.Popen(train_command(study, spec, killed), env=job_env(), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    while not (run_dir / "checkpoints" / "latest").exists() and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "result.json").exists(), "killed before the end"
    execute(study, spec, killed)  # the same run again: resumes from the epoch checkpoint

    def metrics(folder: Path) -> list[dict]:
        result = json.loads((folder / "result.json").read_text())
        return [{k: v for k, v in e.items() if k != "wall_s"} for e in result["epochs"]]

    assert metrics(run_dir) == metrics(straight)


def test_study_files_are_checked(tmp_path):
    for name in ("digits", "mnist", "cifar10", "cifar100"):
        study = load_study(ROOT / "configs" / "studies" / f"{name}.json")
        assert study.optimizers == OPTIMIZERS and study.dataset == name
    assert load_study(ROOT / "configs" / "studies" / "cifar100.json").epochs == 100
    assert load_study(ROOT / "configs" / "studies" / "mnist.json").seeds == 20
    variants = load_study(ROOT / "configs" / "studies" / "digits_variants.json")
    assert variants.optimizers == (*OPTIMIZERS, "wame_keras", "wame_keras_grad")
    for name in ("mnist", "cifar10", "cifar100"):  # the authors' own settings
        authors = load_study(ROOT / "configs" / "studies" / f"{name}_authors.json")
        assert authors.dataset == name and "wame_keras" in authors.optimizers and authors.seeds == 20
        assert set(authors.lr_decay) == set(authors.optimizers)
        command = train_command(authors, final_runs(authors)[0], tmp_path)
        assert command[command.index("--lr-decay") + 1] == repr(authors.lr_decay[authors.optimizers[0]])
        assert json.loads(command[command.index("--optimizer-params") + 1]) == {"nesterov": True}  # sgd
    with pytest.raises(BadInput, match="lr_decay of adam must be a number >= 0"):
        make_study({"lr_decay": {"adam": -1}})
    with pytest.raises(BadInput, match=r"unknown optimizer\(s\) \['lion'\]"):
        make_study({"optimizer_params": {"lion": {}}})
    with pytest.raises(BadInput, match=r"unknown key\(s\) \['seedz'\]"):
        make_study({"seedz": 3})
    with pytest.raises(BadInput, match=r"unknown optimizer\(s\) \['lion'\]"):
        make_study({"optimizers": ["wame", "lion"]})
    with pytest.raises(BadInput, match="seeds must be a positive integer"):
        make_study({"seeds": 0})
    with pytest.raises(BadInput, match="does not exist"):
        load_study(tmp_path / "none.json")


def record_of(seed: int, value: int) -> dict:
    return {"key": {"dataset": "d", "model": "m", "optimizer": "wame", "seed": seed, "lr": 0.001}, "v": value}


def file_record_when_released(out: str, seed: int, start: multiprocessing.synchronize.Event) -> None:
    start.wait()
    StudyRecords(out).add(record_of(seed, seed))


def test_concurrent_finishers_lose_no_record(tmp_path):
    """Sixteen processes file their runs' records at the same moment (as array tasks finishing together on
    several nodes would): every record is there, whole, and no temporary file is left behind."""
    context = multiprocessing.get_context("fork")  # separate processes, without re-importing torch
    start = context.Event()
    finishers = [
        context.Process(target=file_record_when_released, args=(str(tmp_path), seed, start))
        for seed in range(16)
    ]
    for process in finishers:
        process.start()
    start.set()
    for process in finishers:
        process.join(timeout=120)
        assert process.exitcode == 0
    records = StudyRecords(tmp_path)
    assert sorted(r["key"]["seed"] for r in records.records()) == list(range(16))
    assert all(r["v"] == r["key"]["seed"] for r in records.records())
    union = records.write_results_file().read_text().splitlines()
    assert [json.loads(line) for line in union] == records.records()
    assert not list(tmp_path.rglob(".*")), "no temporary file is left behind"


def test_a_record_filed_again_replaces_the_first(tmp_path):
    records = StudyRecords(tmp_path)
    records.add(record_of(0, 1))
    records.add(record_of(0, 2))
    assert records.records() == [record_of(0, 2)]
    assert records.finished()[("d", "m", "wame", 0, 0.001)]["v"] == 2


def test_a_rule_can_take_the_rate_tuned_for_another(tmp_path):
    """``tune.same_as``: the state types of WAME are compared at the rate tuned for fp32 WAME; a rule given
    another's rate may not have a grid of its own, and its source must have one."""
    study = load_study(ROOT / "configs" / "studies" / "digits_state.json")
    assert study.tune.same_as == {"wame_bf16": "wame", "wame_8bit": "wame"} and set(study.tune.grid) == {
        "wame"
    }
    raw = json.loads((ROOT / "configs" / "studies" / "digits_state.json").read_text())
    raw["tune"]["grid"]["wame_bf16"] = [0.01]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(raw))
    with pytest.raises(BadInput, match=r"tune\.same_as gives wame_bf16 the rate tuned for wame"):
        load_study(bad)
