"""`init_distributed` without a launcher (`python launchers/train.py RECIPE`): one rank on this host, not
DeepSpeed's MPI discovery, which fails with "No module named 'mpi4py'" when RANK is unset."""

import os
import subprocess
import sys

import pytest
import torch

from ard_scale.errors import UserError
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


def test_tasks_that_srun_started_without_a_launcher_are_refused(monkeypatch):
    """`srun --ntasks=2 python launchers/train.py RECIPE`: each task has SLURM_* but no RANK. They made a 1-rank run
    each in one run directory (one trained alone, the other stopped on the run lock with a message about "another
    training run"); now every task stops with one error naming the launch that works. A run of one process inside a
    batch script (no job step) or a one-task step is still one rank. (The real srun: tests/e2e/test_slurm.py.)"""
    from ard_scale.distributed.engines import _one_process_env

    env = {"PATH": os.environ["PATH"], "SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "1", "SLURM_NTASKS": "2"}
    monkeypatch.setattr(os, "environ", env)  # this process's own environment is left alone
    with pytest.raises(UserError, match=r"Slurm task 1 of 2 by srun, with no RANK.*launchers/slurm/train\.sbatch"):
        _one_process_env()
    assert "RANK" not in env

    env["SLURM_STEP_NUM_TASKS"] = env["SLURM_NTASKS"] = "1"
    _one_process_env()  # one task: one rank on this host
    assert (env["RANK"], env["WORLD_SIZE"], env["MASTER_ADDR"]) == ("0", "1", "127.0.0.1")


def test_ranks_of_the_deepspeed_launcher_share_the_cores(monkeypatch):
    """`deepspeed --num_gpus G launchers/train.py`: the launcher sets LOCAL_SIZE but no OMP_NUM_THREADS, and each rank
    ran torch's default of one thread per core of the host (G times the cores in all). A rank now takes its share;
    a number the user or torchrun set (OMP_NUM_THREADS) stays theirs."""
    from ard_scale.distributed.engines import _share_cores_between_local_ranks

    cores = len(os.sched_getaffinity(0))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(cores)  # torch's default
        env = {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "LOCAL_SIZE": "2"}  # what the deepspeed launcher sets
        monkeypatch.setattr(os, "environ", env)
        _share_cores_between_local_ranks()
        assert torch.get_num_threads() == max(1, cores // 2) and env["OMP_NUM_THREADS"] == str(max(1, cores // 2))

        torch.set_num_threads(cores)
        env = {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}
        monkeypatch.setattr(os, "environ", env)  # torchrun's: already chosen
        _share_cores_between_local_ranks()
        assert torch.get_num_threads() == cores
    finally:
        torch.set_num_threads(before)
