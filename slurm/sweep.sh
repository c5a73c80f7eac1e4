#!/bin/bash
# A study's grid (seeds x optimizers, from its study file) as ONE SLURM job array, then a report job.
#
#   slurm/sweep.sh configs/studies/cifar10.json [sbatch options for every run]
#   SWEEP_DIR=runs/c10 SEEDS=5 slurm/sweep.sh configs/studies/cifar10.json --nodes=2 --gpus-per-node=4
#
# Run it with bash on the node you submit from, in the repository root (not with sbatch: it submits the
# jobs itself). It writes the sweep folder SWEEP_DIR (default runs/sweep-STUDY): the study, the initial
# weights of every seed (before the array starts; shared by all optimizers of the seed) and the grid
# (grid.tsv: array index -> seed, optimizer, lr). Then it submits one array task per run with no record in
# SWEEP_DIR/records/ and a job that writes SWEEP_DIR/results.jsonl and the report (SWEEP_DIR/report) once the
# array is over. Each task trains its run like the single-run templates do (slurm/common.sh: one task per
# GPU, requeue and resume on SIGUSR1) and files its record as its own file (no shared file, no lock). Running the script again
# submits only the runs still missing (failed ones); when none is, it says so and submits nothing.
# Environment: SWEEP_DIR; SEEDS, EPOCHS (override the study's); PARALLEL (most tasks running at once).
# Logs: SWEEP_DIR/logs. Site settings: slurm/site.sh.
#SBATCH --job-name=wame-sweep
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --time=24:00:00
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@120
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "${WAME_ROOT:-${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}}/slurm/common.sh"

# submit STUDY [SBATCH OPTIONS]: the sweep folder, the array of missing runs, the report job.
submit() {
  local study=${1:?usage: slurm/sweep.sh STUDY.json [sbatch options for every run]} dir overrides=() todo
  shift
  wame_setup
  dir=${SWEEP_DIR:-runs/sweep-$(basename "$study" .json)}
  mkdir -p "$dir/logs"
  dir=$(cd "$dir" && pwd)
  [ -z "${SEEDS:-}" ] || overrides+=(--seeds "$SEEDS")
  [ -z "${EPOCHS:-}" ] || overrides+=(--epochs "$EPOCHS")
  todo=$("$PYTHON" -m wame_dist.sweep.array plan "$study" "$dir" "${overrides[@]}" | sed -n 's/^todo: //p')
  if [ -z "$todo" ]; then
    echo "every run of $dir is recorded: nothing to submit"
    return 0
  fi
  cd "$WAME_ROOT"  # the jobs find the repository through SLURM_SUBMIT_DIR
  local array report
  array=$(sbatch --parsable --job-name="sweep-$(basename "$dir")" --array="$todo${PARALLEL:+%$PARALLEL}" \
    --output="$dir/logs/%A_%a.out" "$@" slurm/sweep.sh task "$dir")
  report=$(sbatch --parsable --job-name="report-$(basename "$dir")" --dependency="afterany:${array%%;*}" \
    --time=30 --output="$dir/logs/report-%j.out" slurm/sweep.sh report "$dir")
  echo "submitted array job ${array%%;*} (tasks $todo) and report job ${report%%;*}; logs in $dir/logs"
}

# task DIR: array task SLURM_ARRAY_TASK_ID trains its run of the grid and records the result.
task() {
  local dir=$1 index=${SLURM_ARRAY_TASK_ID:-} row seed optimizer lr init args
  [ -n "$index" ] || wame_die "'slurm/sweep.sh task' runs as a task of the array that slurm/sweep.sh submits"
  [ -f "$dir/grid.tsv" ] || wame_die "$dir is not a sweep folder (no grid.tsv): run slurm/sweep.sh STUDY.json"
  wame_setup
  row=$(awk -F '\t' -v i="$index" 'NR > 1 && $1 == i' "$dir/grid.tsv")
  [ -n "$row" ] || wame_die "array index $index is outside the grid of $dir: its indices are" \
    "0-$(($(wc -l <"$dir/grid.tsv") - 2)) (see grid.tsv)"
  IFS=$'\t' read -r _ seed optimizer lr init OUT_DIR <<<"$row"
  [ -f "$init" ] || wame_die "the initial weights of seed $seed are missing: $init (slurm/sweep.sh writes" \
    "them before it submits the array: run it again)"
  mapfile -t args <"$dir/grid/$index.args"
  echo "run $index of $dir: seed $seed, $optimizer, lr $lr"
  wame_train "${args[@]}"
  "$PYTHON" -m wame_dist.sweep.array record "$dir" "$index"
}

# report DIR: results.jsonl, Table 2, Figure 1 and the Friedman tests of the records so far.
report() {
  wame_setup
  "$PYTHON" -m wame_dist.sweep.array report "$1"
}

case ${1:-} in
  task | report) "$1" "${2:?usage: slurm/sweep.sh $1 SWEEP_DIR}" ;;
  *) submit "$@" ;;
esac
