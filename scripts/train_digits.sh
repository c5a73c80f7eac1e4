#!/usr/bin/env bash
# The main job: WAME trains the paper's Table 1a network on the embedded digits data on several ranks,
# under DeepSpeed ZeRO-2 (CPU: one process per rank, gloo; GPU machine: one rank per GPU).
#
#   scripts/train_digits.sh [extra launch/train.py options]
#
# Environment: RANKS (default 2), EPOCHS (10), WIDTH (0.25: a quarter-width network for CPUs),
# ZERO_CONFIG (configs/zero2.json), OUT_DIR (runs/digits_wame). Sets up .venv first (scripts/env.sh).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$("$root/scripts/env.sh")
export PATH="$venv/bin:$PATH"  # the venv's ninja builds DeepSpeed's and WAME's JIT extensions
exec "$venv/bin/deepspeed" --num_gpus "${RANKS:-2}" "$root/launch/train.py" \
  --deepspeed_config "${ZERO_CONFIG:-$root/configs/zero2.json}" \
  --dataset digits --width "${WIDTH:-0.25}" --epochs "${EPOCHS:-10}" \
  --out-dir "${OUT_DIR:-runs/digits_wame}" "$@"
