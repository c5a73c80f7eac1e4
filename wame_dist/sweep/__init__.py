"""A study's grid (seeds x optimizers) on a cluster: submitit jobs (``wame-dist sweep``) or one SLURM job
array (``slurm/sweep.sh``, whose Python half is :mod:`wame_dist.sweep.array`), into one results file."""
