#!/bin/bash
# CIFAR-100 with WAME (Table 1b network): one training run across the job's nodes, one task per GPU.
#
#   sbatch slurm/cifar100_wame.sh                                    one node, one task (CPU)
#   sbatch --nodes=2 --gpus-per-node=4 slurm/cifar100_wame.sh        8 ranks, one per GPU
#   sbatch --nodes=2 --ntasks-per-node=2 slurm/cifar100_wame.sh      4 ranks on CPUs
#   SEED=3 OPTIMIZER=adam EPOCHS=30 sbatch slurm/cifar100_wame.sh [training options: python -m wame_dist.training --help]
#
# Submit from the repository root. The run is set by environment variables (slurm/common.sh lists them:
# DATASET, OPTIMIZER, SEED, LR, EPOCHS, WIDTH, ENGINE, ZERO_CONFIG, DATA_DIR, INIT_WEIGHTS, OUT_DIR ...), site
# settings live in slurm/site.sh. Outputs go to OUT_DIR (default runs/JOBNAME-JOBID), this log to
# JOBNAME-JOBID.out. Shortly before the time limit (or on preemption, SIGUSR1) the job requeues itself and
# resumes from its last epoch checkpoint.
#SBATCH --job-name=cifar100_wame
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@120
set -euo pipefail
DATASET=${DATASET:-cifar100}
# shellcheck source-path=SCRIPTDIR source=common.sh
source "${WAME_ROOT:-${SLURM_SUBMIT_DIR:-.}}/slurm/common.sh"
wame_single_run "$@"
