#!/usr/bin/env bash
# Creates .venv (once) and installs ard_scale with the pinned dependency set. Safe to rerun: it reinstalls only
# when constraints.txt or setup.py changed since the last successful install.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.ard_scale_installed
want=$(cat constraints.txt setup.py | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[train,eval,dev]"
  echo "$want" > "$stamp"
fi
