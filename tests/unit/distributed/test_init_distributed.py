"""`init_distributed` without a launcher (`python launchers/train.py RECIPE`): one rank on this host, not
DeepSpeed's MPI discovery, which fails with "No module named 'mpi4py'" when RANK is unset."""

import subprocess
import sys

from ard_scale.utils.launch import ROOT, launch_env

CHILD = """
import os
import torch
from ard_scale.distributed.engines import init_distributed

rank, world = init_distributed()
t = torch.ones(2)
torch.distributed.all_reduce(t)
print("group", rank, world, torch.distributed.get_backend(), os.environ["MASTER_ADDR"], t.tolist(), flush=True)
"""

LAUNCHER_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def test_init_distributed_without_a_launcher_makes_a_one_process_group():
    env = {k: v for k, v in launch_env().items() if k not in LAUNCHER_KEYS and not k.startswith(("OMPI_", "PMI"))}
    proc = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "group 0 1 gloo 127.0.0.1 [1.0, 1.0]" in proc.stdout
