#!/usr/bin/env bash
# The test command: sets up everything the tests need on a fresh machine, then runs pytest.
#
#   scripts/test.sh [pytest arguments]
#
# 1. the Python environment (scripts/env.sh: .venv, rebuilt when pyproject.toml changes);
# 2. Debian's SLURM packages for the local test cluster (scripts/slurm_local.sh install; a no-op when
#    present). The tests start and stop the daemons themselves.
# Nothing is skipped for a missing component: an install step that fails fails the run.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$("$root/scripts/env.sh")
bash "$root/scripts/slurm_local.sh" install
cd "$root"
# The venv first on PATH: its ninja (a dependency) builds the JIT extensions; a second ninja elsewhere on
# PATH would consider those builds stale and rebuild them (minutes) in every other process.
export PATH="$venv/bin:$PATH"
exec "$venv/bin/python" -m pytest "$@"
