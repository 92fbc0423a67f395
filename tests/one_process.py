"""A one-process DeepSpeed job in a fresh interpreter: for tests of engine behaviour that need a process group (and
DeepSpeed's global state) of their own, without a launcher. The child prints one line `RESULT <json>`."""

import json
import subprocess
import sys

from ard_scale.utils.launch import ROOT, launch_env

LAUNCHER_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")  # unset: init_distributed makes a 1-rank group


def run_child(code: str, *args: str) -> dict:
    """Run `code` with `args` as a one-rank job (`init_distributed` without a launcher); its RESULT line, parsed."""
    env = {k: v for k, v in launch_env().items() if k not in LAUNCHER_KEYS}
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line is not None, proc.stdout[-3000:]
    return json.loads(line.removeprefix("RESULT "))
