#!/usr/bin/env bash
# Creates or refreshes the project's virtual environment, then prints its path.
#
# Idempotent: the environment is rebuilt whenever pyproject.toml changes (a stamp holds its hash),
# so a dependency added to the project can never be missing from an old environment unnoticed.
# WAME_VENV chooses the location (default: .venv beside this repository); TORCH_SPEC the torch
# build to install first (default: the pair this project is tested with).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${WAME_VENV:-$root/.venv}
torch_spec=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
stamp=$venv/.wame-dist-stamp
want="$(sha256sum "$root/pyproject.toml" | cut -c1-16) $torch_spec"

if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setting up $venv (torch: $torch_spec) ..." >&2
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip >&2
  # shellcheck disable=SC2086  # torch_spec is a list of requirement specifiers
  "$venv/bin/python" -m pip install -q $torch_spec >&2
  "$venv/bin/python" -m pip install -q -e "${root}[dev,mpi,hf,lightning]" >&2
  echo "$want" > "$stamp"
fi
echo "$venv"
