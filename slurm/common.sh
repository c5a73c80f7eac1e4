# shellcheck shell=bash source-path=SCRIPTDIR
# Sourced by the slurm/ scripts: site settings, checks that fail a job at once with a clear message, and
# the one srun that trains a run on every task of the job. Nothing in this file is cluster-specific: that
# goes into slurm/site.sh.
#
# A run is set by environment variables, all optional (sbatch passes the submitting shell's environment):
#   DATASET       digits, mnist, cifar10 or cifar100                 [the template's]
#   OPTIMIZER     a rule of wame_dist.training.optimizers.RULES       [wame]
#   SEED          initial weights, data order and dropout             [0]
#   LR            learning rate                                       [the optimizer's documented default]
#   EPOCHS        [100]    BATCH_SIZE  global batch [128]    WIDTH  channel multiplier [1.0]
#   MODEL         network                                             [the paper's for the data set]
#   ENGINE        deepspeed, or fsdp2 (PyTorch's fully_shard, DCP checkpoints)  [deepspeed]
#   ZERO_CONFIG   DeepSpeed config (under fsdp2: batch, optimizer, precision)  [configs/zero2.json]
#   DATA_DIR      folder with the MNIST / CIFAR files                 [data]
#   INIT_WEIGHTS  initial weights to start from (wame-dist init-weights)  [none: drawn from SEED]
#   OUT_DIR       the run's folder: metrics.jsonl, result.json, checkpoints/, job.log (a link to the job's
#                 output)                                             [runs/JOBNAME-JOBID]
# Default paths are in the repository; relative ones are taken from the folder sbatch was called in.

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

# wame_single_run [TRAINING OPTIONS]: the templates' job: one run, set by the environment (see above).
wame_single_run() {
  [ -n "${SLURM_JOB_ID:-}" ] || wame_die "this is a batch script: submit it with sbatch"
  wame_setup
  local dataset=${DATASET:?} optimizer=${OPTIMIZER:-wame} seed=${SEED:-0} data_dir=${DATA_DIR:-$WAME_ROOT/data}
  local config=${ZERO_CONFIG:-$WAME_ROOT/configs/zero2.json} engine=${ENGINE:-deepspeed}
  case $engine in
    deepspeed | fsdp2) ;;
    *) wame_die "unknown engine '$engine' (ENGINE): use deepspeed or fsdp2" ;;
  esac
  local rules  # the update rules of wame_dist's one registry (its own line: imports may print too)
  rules=$("$PYTHON" -c 'from wame_dist.training.optimizers import RULES; print("rules:", *RULES)' 2>/dev/null |
    sed -n 's/^rules: //p')
  [ -n "$rules" ] || wame_die "cannot import wame_dist with $PYTHON: install the project there (scripts/env.sh)"
  case " $rules " in
    *" $optimizer "*) ;;
    *) wame_die "unknown optimizer '$optimizer' (OPTIMIZER): use one of: $rules" ;;
  esac
  case $dataset in
    digits) ;;
    mnist | cifar10 | cifar100)
      [ -d "$data_dir" ] || wame_die "data folder '$data_dir' of $dataset does not exist (DATA_DIR): put the files there or set DATA_DIR" ;;
    *) wame_die "unknown data set '$dataset' (DATASET): use digits, mnist, cifar10 or cifar100" ;;
  esac
  [ -f "$config" ] || wame_die "DeepSpeed config '$config' does not exist (ZERO_CONFIG): see configs/"
  if [ -n "${INIT_WEIGHTS:-}" ] && [ ! -f "$INIT_WEIGHTS" ]; then
    wame_die "initial weights '$INIT_WEIGHTS' of seed $seed do not exist (INIT_WEIGHTS): write them with" \
      "wame-dist init-weights --dataset $dataset --width ${WIDTH:-1.0} --seed $seed --out $INIT_WEIGHTS"
  fi
  OUT_DIR=${OUT_DIR:-$WAME_ROOT/runs/$SLURM_JOB_NAME-$SLURM_JOB_ID}  # the job ID survives requeues
  local args=(--engine "$engine" --deepspeed_config "$config" --dataset "$dataset" --data-dir "$data_dir"
    --optimizer "$optimizer" --seed "$seed" --epochs "${EPOCHS:-100}" --batch-size "${BATCH_SIZE:-128}"
    --width "${WIDTH:-1.0}" --out-dir "$OUT_DIR")
  [ -z "${LR:-}" ] || args+=(--lr "$LR")
  [ -z "${MODEL:-}" ] || args+=(--model "$MODEL")
  [ -z "${INIT_WEIGHTS:-}" ] || args+=(--init-weights "$INIT_WEIGHTS")
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
