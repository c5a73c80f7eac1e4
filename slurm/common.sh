# shellcheck shell=bash source-path=SCRIPTDIR
# Sourced by the slurm/ scripts: site settings, checks that fail a job at once with a clear message, and
# the one srun that trains a run on every task of the job. Nothing in this file is cluster-specific: that
# goes into slurm/site.sh.
#
# A run is set by environment variables, all optional (sbatch passes the submitting shell's environment);
# each is one option of the training module, whose defaults, choices and checks apply (its --help lists
# them; none is repeated here):
#   DATASET --dataset   OPTIMIZER --optimizer   SEED --seed   LR --lr   EPOCHS --epochs
#   BATCH_SIZE --batch-size   WIDTH --width   MODEL --model   ENGINE --engine   DATA_DIR --data-dir
#   INIT_WEIGHTS --init-weights
# and two belong to the job:
#   ZERO_CONFIG   the --deepspeed_config (under ENGINE=fsdp2: batch, optimizer, precision) [configs/zero2.json]
#   OUT_DIR       the run's folder: metrics.jsonl, result.json, checkpoints/, job.log (a link to the job's
#                 output)                                                  [runs/JOBNAME-JOBID]
# Relative paths are taken from the folder sbatch was called in.

WAME_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

wame_die() {
  echo "error: $*" >&2
  exit 2
}

# wame_setup: the site's settings and setup, then the Python environment, activated: its bin/ first on PATH
# (DeepSpeed builds its ops with that environment's ninja) and its python as PYTHON.
wame_setup() {
  local site=${WAME_SITE:-$WAME_ROOT/slurm/site.sh}
  [ -f "$site" ] || wame_die "site settings $site not found (WAME_SITE)"
  # shellcheck source=site.sh
  source "$site"
  site_setup
  WAME_VENV=${WAME_VENV:-$WAME_ROOT/.venv}
  PYTHON=$WAME_VENV/bin/python
  [ -x "$PYTHON" ] || wame_die "no Python environment at $WAME_VENV: create it (scripts/env.sh) or set" \
    "WAME_VENV in slurm/site.sh"
  export VIRTUAL_ENV=$WAME_VENV PATH=$WAME_VENV/bin:$PATH
}

# The environment variables of a run and the training options they set (see above).
WAME_RUN_VARIABLES=(DATASET:--dataset OPTIMIZER:--optimizer SEED:--seed LR:--lr EPOCHS:--epochs
  BATCH_SIZE:--batch-size WIDTH:--width MODEL:--model ENGINE:--engine DATA_DIR:--data-dir
  INIT_WEIGHTS:--init-weights)

# wame_single_run [TRAINING OPTIONS]: the templates' job: one run, set by the environment (see above). The
# training module checks the whole run first (python -m wame_dist.training --check), in one process, so
# bad input fails the job at once, with its one-line error, before any rank starts.
wame_single_run() {
  [ -n "${SLURM_JOB_ID:-}" ] || wame_die "this is a batch script: submit it with sbatch"
  wame_setup
  OUT_DIR=${OUT_DIR:-$WAME_ROOT/runs/$SLURM_JOB_NAME-$SLURM_JOB_ID}  # the job ID survives requeues
  local args=(--deepspeed_config "${ZERO_CONFIG:-$WAME_ROOT/configs/zero2.json}" --out-dir "$OUT_DIR") pair
  for pair in "${WAME_RUN_VARIABLES[@]}"; do
    local variable=${pair%%:*}
    [ -z "${!variable:-}" ] || args+=("${pair#*:}" "${!variable}")
  done
  "$PYTHON" -m wame_dist.training --check "${args[@]}" "$@" ||
    wame_die "the run cannot start (the line above says why; the environment variables that set it are" \
      "listed in slurm/common.sh); no rank was started"
  wame_train "${args[@]}" "$@"
}

# wame_train OPTIONS...: python -m wame_dist.training on every task of the job, for the run in OUT_DIR: one task
# per GPU (without GPUs: --ntasks-per-node tasks) on each node, rendezvous on the job's first node. On
# SIGUSR1 (#SBATCH --signal=B:USR1@...: the time limit is near, or the site preempts) the job is requeued;
# started again, the run resumes from the last complete epoch checkpoint in OUT_DIR.
wame_train() {
  local nodes=$SLURM_JOB_NUM_NODES per_node=${SLURM_GPUS_ON_NODE:-${SLURM_NTASKS_PER_NODE:-1}} hosts log
  local cpus=$((${SLURM_CPUS_ON_NODE:-1} / per_node)) overcommit=()
  [ "$cpus" -ge 1 ] || { cpus=1 overcommit=(--overcommit); }  # more GPUs than CPUs allocated
  hosts=$(scontrol show hostnames "$SLURM_JOB_NODELIST")
  export MASTER_ADDR=${hosts%%$'\n'*} MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000)) OMP_NUM_THREADS=$cpus
  echo "job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NODELIST: $nodes node(s) x" \
    "$per_node task(s), rendezvous $MASTER_ADDR:$MASTER_PORT, run folder $OUT_DIR"
  if [ -f "$OUT_DIR/checkpoints/latest" ]; then
    echo "resuming from checkpoint $(cat "$OUT_DIR/checkpoints/latest")"
  fi
  mkdir -p "$OUT_DIR"  # the run folder gets a link to this log, beside its metrics and checkpoints
  log=$(scontrol show job "$SLURM_JOB_ID" | sed -n 's/^ *StdOut=//p')
  [ -z "$log" ] || ln -sfn "$log" "$OUT_DIR/job.log"
  trap wame_requeue USR1
  srun --nodes="$nodes" --ntasks-per-node="$per_node" --ntasks=$((nodes * per_node)) --cpus-per-task="$cpus" \
    "${overcommit[@]}" --kill-on-bad-exit=1 "$PYTHON" -u -m wame_dist.training "$@" &
  local step=$! status=0
  wait "$step" || status=$?
  while kill -0 "$step" 2>/dev/null; do  # a trapped signal ended `wait` early: the step goes on
    status=0
    wait "$step" || status=$?
  done
  trap '' USR1  # the run is over: nothing left to resume
  return "$status"
}

wame_requeue() {
  echo "SIGUSR1 (time limit near, or preemption): requeueing job $SLURM_JOB_ID; it resumes from the last" \
    "epoch checkpoint in $OUT_DIR"
  scontrol requeue "$SLURM_JOB_ID" || echo "warning: scontrol requeue failed; the run goes on" >&2
}
