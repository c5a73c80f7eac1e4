"""The Python half of ``slurm/sweep.sh``: plan a sweep as one SLURM job array, record a task, report.

    python -m wame_dist.sweep.array plan STUDY.json SWEEP_DIR [--seeds N] [--epochs E]
    python -m wame_dist.sweep.array record SWEEP_DIR INDEX
    python -m wame_dist.sweep.array report SWEEP_DIR

``plan`` prepares the sweep folder (:func:`wame_dist.sweep.grid.prepare`: the study, and the initial weights
of every seed, before any task starts), writes the grid for the array's tasks and prints, last, the indices
of the runs with no record yet in the form of sbatch's ``--array``: "todo: 0-3,6"
("todo: " when none is missing). The grid is ``grid.tsv`` (a header, then index, seed, optimizer, lr,
initial-weights file, run folder, tab-separated) and ``grid/INDEX.args`` (the run's
``RunConfig.to_argv()`` for ``python -m wame_dist.training``, one a line).
``record`` files the record of the grid's run INDEX (its own file: no two tasks write the same one);
``report`` writes ``results.jsonl`` (every record, one a line) and the report into ``SWEEP_DIR/report``.
Bad input ends with one line on stderr and exit status 2 (:func:`wame_dist.errors.run_command`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wame_dist import atomic
from wame_dist.errors import BadInput, run_command
from wame_dist.experiment.plan import final_runs
from wame_dist.experiment.records import StudyRecords
from wame_dist.experiment.runs import init_weights_path, record_result, run_config, run_dir
from wame_dist.experiment.study import StudyConfig, load_study
from wame_dist.sweep import grid

COLUMNS = ("index", "seed", "optimizer", "lr", "init_weights", "run_dir")


def plan(study: StudyConfig, out: Path) -> str:
    """Prepares ``out`` for the array, writes its grid; returns the missing runs' indices ("" if none)."""
    study, missing = grid.prepare(study, out)
    rows = ["\t".join(COLUMNS)]
    for index, spec in enumerate(final_runs(study)):
        init, folder = init_weights_path(study, out, spec.seed), run_dir(study, spec, out)
        rows.append("\t".join(map(str, (index, spec.seed, spec.optimizer, repr(spec.lr), init, folder))))
        atomic.write_text(
            out / "grid" / f"{index}.args", "\n".join(run_config(study, spec, out).to_argv()) + "\n"
        )
    atomic.write_text(out / "grid.tsv", "\n".join(rows) + "\n")
    total = len(rows) - 1
    print(
        f"{out}: {total} runs, {total - len(missing)} recorded, {len(missing)} to run",
        file=sys.stderr,
    )
    for index, spec in missing:
        print(f"  {index}: {spec.name(study)}", file=sys.stderr)
    return ranges([index for index, _ in missing])


def ranges(indices: list[int]) -> str:
    """Sorted indices as sbatch's ``--array`` list: [0, 1, 2, 5] -> "0-2,5"."""
    spans: list[list[int]] = []
    for i in indices:
        if spans and i == spans[-1][1] + 1:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in spans)


def record(out: Path, index: int) -> None:
    study = grid.load_swept(out)
    runs = final_runs(study)
    if not 0 <= index < len(runs):
        raise BadInput(f"index {index} is outside the grid of {out} (0-{len(runs) - 1})")
    result = record_result(study, runs[index], out)
    print(f"recorded {runs[index].name(study)}: test accuracy {result['test_acc_at_best']:.4f}")


def report(out: Path) -> None:
    """``results.jsonl`` and the report of the sweep in ``out`` (every environment listed, as a study's)."""
    from wame_dist.report import write_report

    records = StudyRecords(out)
    if not records.records():
        raise BadInput(f"{out} has no finished run yet: nothing to report")
    print(records.write_results_file())
    for path in write_report(out, out / "report", mixed_environments=True):
        print(path)


def main(argv: list[str] | None = None) -> int:
    return run_command("python -m wame_dist.sweep.array", _main, sys.argv[1:] if argv is None else argv)


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m wame_dist.sweep.array", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("plan", help="prepare the sweep folder, print the indices to submit")
    p.add_argument("study")
    p.add_argument("out")
    p.add_argument("--seeds", type=int, default=None, help="override the study's number of seeds")
    p.add_argument("--epochs", type=int, default=None, help="override the study's epochs")
    r = commands.add_parser("record", help="file a finished run's record")
    r.add_argument("out")
    r.add_argument("index", type=int)
    t = commands.add_parser("report", help="results.jsonl and the report of the records so far")
    t.add_argument("out")
    args = parser.parse_args(argv)
    if args.command == "plan":
        study = load_study(args.study, seeds=args.seeds, epochs=args.epochs)
        print(f"todo: {plan(study, Path(args.out).resolve())}")
    elif args.command == "record":
        record(Path(args.out).resolve(), args.index)
    else:
        report(Path(args.out).resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
