"""torch's CPU threads per rank under each launcher, with no OMP_NUM_THREADS of the user's: the ranks on one host
share its cores instead of each running one thread per core (ard_scale/distributed/engines.py)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ard_scale.utils.launch import ROOT, free_port, launch_env

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

CHILD = """
import torch
from ard_scale.distributed.engines import init_distributed
rank, world = init_distributed()
print(f"THREADS rank={rank} world={world} threads={torch.get_num_threads()}", flush=True)
"""


def test_the_deepspeed_launchers_ranks_share_the_hosts_cores(tmp_path):
    """`deepspeed --num_gpus 2`: the launcher sets no OMP_NUM_THREADS (torchrun sets 1), and each rank ran as many
    threads as the host has cores."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {k: v for k, v in launch_env().items() if k != "OMP_NUM_THREADS"}
    deepspeed = Path(sys.executable).parent / "deepspeed"
    cmd = [str(deepspeed), "--num_gpus", "2", "--master_port", str(free_port()), str(script)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # found in the text, not per line: the two ranks' lines can come out run together ("...threads=1THREADS rank=1")
    lines = sorted(re.findall(r"THREADS rank=\d+ world=\d+ threads=\d+", proc.stdout))
    share = max(1, len(os.sched_getaffinity(0)) // 2)
    assert lines == [f"THREADS rank={r} world=2 threads={share}" for r in (0, 1)], proc.stdout[-3000:]
