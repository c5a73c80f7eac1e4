# shellcheck shell=bash
# Site settings of the slurm/ scripts and of `wame-dist sweep`: the one file to edit for a cluster.
# The defaults suit a plain SLURM cluster (and the local test cluster); nothing here is required.
# Every job sources this file and calls site_setup before anything else (slurm/sweep.sh also does on the
# node you submit from). WAME_SITE=FILE makes the scripts use another file instead.

# 1. Submit-time defaults are sbatch's own input environment variables, read by sbatch (and by the sbatch
#    that submitit runs) on the node you submit from: `source slurm/site.sh` in that shell (slurm/sweep.sh
#    does it itself). Flags given to sbatch still win. For example:
# export SBATCH_PARTITION=gpu
# export SBATCH_ACCOUNT=my_project
# export SBATCH_QOS=normal
# export SBATCH_CPUS_PER_GPU=8

# 2. The Python environment of the jobs (its bin/python runs python -m wame_dist.training). Default: the repository's
#    .venv (scripts/env.sh creates it).
# WAME_VENV=/shared/envs/wame

# 3. Run at the start of every job, before Python: modules, CUDA / NCCL settings, scratch folders ...
site_setup() {
  # module load cuda/12.4 nccl/2.21
  # export NCCL_SOCKET_IFNAME=ib0
  :
}
