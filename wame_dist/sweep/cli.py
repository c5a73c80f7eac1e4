"""``wame-dist sweep STUDY.json --out DIR``: the study's final runs (seeds x optimizers) as submitit jobs.

On SLURM the runs go as one job array (at most ``--array-parallelism`` at a time), each job with the
resources given here (nodes, tasks = GPUs per node, CPUs, time, partition, account; the site file's
``site_setup`` runs first in every job). ``--cluster local`` runs them on this machine instead,
``--array-parallelism`` at a time. The initial weights of every seed are written before anything is
submitted; each job files its run's record in ``DIR/records/``; a preempted or timed-out job is requeued
and resumes from its last epoch checkpoint. At the end the command lists the runs that failed and writes
``DIR/results.jsonl`` (every record, one a line) and the report (``wame-dist report``) into ``DIR/report``.
Running it again submits only the runs with no record (the failed ones); when none is missing it says so
and submits nothing.
"""

from __future__ import annotations

import argparse
import os
import shlex
from collections.abc import Sequence
from pathlib import Path

import submitit

from wame_dist.experiment import plan
from wame_dist.experiment.records import StudyRecords
from wame_dist.experiment.runs import RunSpec
from wame_dist.experiment.study import StudyConfig, load_study
from wame_dist.report import write_report
from wame_dist.sweep import grid
from wame_dist.sweep.job import TrainRun

#: The site settings (slurm/site.sh) every job sources first: WAME_SITE, as for the slurm/ scripts, else the
#: repository's copy when run from its root; none from elsewhere (e.g. an installed wheel).
SITE = os.environ.get("WAME_SITE", "slurm/site.sh")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wame-dist sweep", description=__doc__.split("\n\n")[1])
    p.add_argument("study", help="a study file, e.g. configs/studies/cifar10.json")
    p.add_argument(
        "--out", required=True, help="the sweep folder (records/, results.jsonl, runs/, report/, logs/)"
    )
    p.add_argument("--seeds", type=int, default=None, help="override the study's number of seeds")
    p.add_argument("--epochs", type=int, default=None, help="override the study's epochs")
    p.add_argument(
        "--cluster",
        choices=("slurm", "local"),
        default=None,
        help="default: slurm if srun is here, else local",
    )
    p.add_argument("--nodes", type=int, default=1, help="nodes per run")
    p.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per node and run (one task per GPU)")
    p.add_argument("--tasks-per-node", type=int, default=None, help="default: --gpus-per-node, or 1 (CPU)")
    p.add_argument("--cpus-per-task", type=int, default=None, help="default: the study's threads_per_run")
    p.add_argument("--time", type=int, default=24 * 60, help="minutes per job (then: requeued, resumed)")
    p.add_argument("--array-parallelism", type=int, default=64, help="runs at a time")
    p.add_argument("--slurm-partition", default=None, help="default: the site's (SBATCH_PARTITION)")
    p.add_argument("--slurm-account", default=None, help="default: the site's (SBATCH_ACCOUNT)")
    p.add_argument("--site", default=SITE, help="site settings whose site_setup every job runs first")
    return p


def executor(args: argparse.Namespace, study: StudyConfig, out: Path) -> submitit.AutoExecutor:
    """The submitit executor with each job's resources."""
    ex = submitit.AutoExecutor(folder=out / "logs" / "%j", cluster=args.cluster)
    # No GPU request at all on CPU clusters (where even --gpus-per-node=0 may be refused).
    gpus = {"gpus_per_node": args.gpus_per_node} if args.gpus_per_node else {}
    site = Path(args.site).resolve()
    ex.update_parameters(
        name=f"wame-sweep-{study.dataset}",
        timeout_min=args.time,
        nodes=args.nodes,
        tasks_per_node=args.tasks_per_node or args.gpus_per_node or 1,
        cpus_per_task=args.cpus_per_task or study.threads_per_run,
        slurm_array_parallelism=args.array_parallelism,
        slurm_partition=args.slurm_partition,
        slurm_account=args.slurm_account,
        slurm_setup=[f"source {shlex.quote(str(site))}", "site_setup"] if site.is_file() else [],
        **gpus,
    )
    return ex


def run(ex: submitit.AutoExecutor, fn: TrainRun, specs: Sequence[RunSpec], study: StudyConfig) -> list[str]:
    """Submits the runs as one array and waits for them; returns a line per failed run."""
    jobs = ex.map_array(fn, specs)
    names = {job.job_id: spec.name(study) for job, spec in zip(jobs, specs)}
    for job in jobs:
        print(f"submitted job {job.job_id}: {names[job.job_id]}", flush=True)
    failed = []
    for job in submitit.helpers.as_completed(jobs):
        try:
            record = job.results()[0]  # task 0: rank 0, which recorded the run
            print(f"finished {names[job.job_id]}: test {100 * record['test_acc_at_best']:.2f}%", flush=True)
        except Exception as error:  # submitit's report of a failed job (a FailedJobError, ...)
            failed.append(f"{names[job.job_id]} (job {job.job_id}): {reason(error)}; log {job.paths.stderr}")
            print(f"FAILED {failed[-1]}", flush=True)
    return failed


def reason(error: Exception) -> str:
    """A failed job's error in one line: the last line of the job's own traceback (submitit quotes it
    between dashed lines), else the start of submitit's message (a job that ended without a result)."""
    parts = str(error).split("----------------------\n")
    trace = parts[1].strip().splitlines() if len(parts) >= 3 else []
    if trace:
        return trace[-1]
    return " ".join(str(error).strip().splitlines()[:2]) or type(error).__name__


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    out = Path(args.out).resolve()
    study, missing = grid.prepare(load_study(args.study, seeds=args.seeds, epochs=args.epochs), out)
    total = len(plan.final_runs(study))
    if not missing:
        print(f"{out}: all {total} runs are recorded: nothing to submit")
        return 0
    print(f"{out}: {total} runs, {len(missing)} to run")
    ex = executor(args, study, out)
    fn = TrainRun(study, out, threads=args.cpus_per_task or study.threads_per_run)
    specs = [spec for _, spec in missing]
    # The local executor runs every job it is given at once: hand it the runs a wave at a time.
    wave = args.array_parallelism if ex.cluster == "local" else len(specs)
    failed = []
    for start in range(0, len(specs), wave):
        failed += run(ex, fn, specs[start : start + wave], study)
    records = StudyRecords(out)
    if records.records():
        print(records.write_results_file())
        # as a study's own report: every environment listed (wame-dist report alone refuses a mix)
        for path in write_report(out, out / "report", mixed_environments=True):
            print(path)
    if failed:
        print(f"{len(failed)} run(s) failed; run the same command again to retry only them:")
        print("\n".join(failed))
        return 1
    return 0
