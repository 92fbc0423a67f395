"""One training run per run directory at a time.

Two runs writing one `checkpoint.run_dir` (a command started twice, a job resubmitted while its first copy still
runs) would overwrite each other's recipe, metrics and checkpoints, and a save of one removes the other's unfinished
checkpoint. So rank 0 of a run holds an exclusive `flock` on `RUN_DIR/.ard_run.lock` for as long as its process
lives (the kernel releases it when the process ends, however it ends; on a network filesystem, once the lock lease
of a dead node expires) and writes who holds it into the file; a second run finds it held and stops before it writes
anything, naming the holder. A filesystem without locks gets a warning and no lock."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
import warnings
from pathlib import Path

import torch.distributed as dist

from ard_scale.errors import UserError

LOCK_FILE = ".ard_run.lock"
_held: dict[Path, int] = {}  # run directory -> the descriptor that holds its lock, for the life of the process


class RunDirInUse(UserError, RuntimeError):
    """Another run holds this run directory. Every rank raises it (`every_rank`), with the same message."""


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["since"]))
        return f"pid {info['pid']} on {info['host']}, since {since}: {info['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not written its name yet"


def _lock(run_dir: Path) -> tuple[bool, str] | None:
    """Take the run directory's lock for this process; else (another run holds it?, why not)."""
    if run_dir in _held:
        return None
    try:
        fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:  # the first write of the run: a folder it cannot write in (permissions, a read-only mount)
        return False, not_writable(run_dir, e)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        return True, (
            f"{run_dir} is in use by another training run ({holder}). Two runs in one folder overwrite each other's "
            "checkpoints: wait for that run to end or stop it, or give this one another checkpoint.run_dir"
        )
    except OSError as e:  # a filesystem without flock (some Lustre and NFS mounts)
        os.close(fd)
        warnings.warn(
            f"cannot lock {run_dir} ({e}): make sure no other run uses it, or two runs would overwrite each other's "
            "checkpoints",
            stacklevel=3,
        )
        return None
    info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), "command": " ".join(sys.argv)}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode("utf-8"), 0)
    _held[run_dir] = fd
    return None


def not_writable(run_dir: Path, error: OSError) -> str:
    """The error for a run directory this run cannot create or write in."""
    return (
        f"cannot write in checkpoint.run_dir {run_dir} ({type(error).__name__}: {error}): make it writable for the "
        "user this job runs as (a filesystem remounted read-only after a disk error needs the disk fixed), or give "
        "checkpoint.run_dir a folder it can write"
    )


def lock_run_dir(run_dir: str | Path, rank: int) -> None:
    """Rank 0 takes `run_dir`'s lock (see the module docstring); every rank raises RunDirInUse if another run holds
    it, or UserError if rank 0 cannot write there. Collective when a process group is up. Call before the run
    writes anything there."""
    run_dir = Path(run_dir).resolve()
    problem = [_lock(run_dir) if rank == 0 else None]
    if dist.is_available() and dist.is_initialized():
        dist.broadcast_object_list(problem, src=0)
    if problem[0] is not None:
        in_use, message = problem[0]
        raise (RunDirInUse if in_use else UserError)(message, every_rank=True)
