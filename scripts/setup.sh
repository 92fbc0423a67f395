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
# DeepSpeed's CPU shared-memory op (the gloo ranks load it at init), compiled once here with this venv's ninja into
# the cache the launchers use (ard_scale/utils/launch.py), not by the first run or test (about 35 s on 2 cores).
# Reruns only check that the build is current.
PATH="$PWD/.venv/bin:$PATH" TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.torch_extensions}" \
  .venv/bin/python -c "from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder; ShareMemCommBuilder().load()" \
  2> >(grep -v "No CUDA runtime is found" >&2) >/dev/null
