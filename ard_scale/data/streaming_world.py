"""How this process appears to mosaicml-streaming, and one host-wide lock around building its datasets.

Streaming reads rank and world from RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE; `streaming_build` exports them
from the loader's arguments. Building a StreamingDataset registers a shared-memory prefix host-wide, in /dev/shm:
each local rank scans for the first free prefix on its own, then the node's local leader creates it. A dataset built
at the same time by any other process on the host (another job, a single-process tool, a parallel test) can register
between those steps, and the build fails: the ranks' scans disagree ("shared memory registered does not match local
leader", mosaicml/streaming#901) or the leader finds its prefix taken (FileExistsError '/NNNNNN_locals').

So ard_scale builds every streaming dataset while the local leader holds `registration_lock`, and a multi-rank
caller lets its ranks start the build only after the leader holds it (distributed.collectives.streaming_build_turn:
the leader locks, then all ranks meet in a barrier). Two builds under the lock never overlap, and no ard_scale
process unlinks a dataset's shared memory at exit (which moves the first free prefix too) while another builds. The
lock is a `flock` on a file in /dev/shm itself (the namespace it guards, which jobs share even where each has its own
TMPDIR; the temporary folder where there is no /dev/shm), released by the kernel if its holder dies; it is reentrant
within a process.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

from ard_scale.errors import UserError

LOCK_FILE = "ard_scale_streaming_registration.lock"
SHARED_MEMORY = "/dev/shm"  # where streaming registers, host-wide
EXIT_WAIT_S = 10.0  # how long an exiting process waits for the lock before it cleans up regardless
_depth = 0  # registration_lock is reentrant: the caller's turn covers the loader's own
_gave_up = False  # a bounded wait (at exit) timed out once in this process: later ones do not wait


def local_world(rank: int, world_size: int, local_world_size: int | None) -> tuple[int, int]:
    """(local rank, local world size) as streaming will see them: `local_world_size` (`data.local_world_size`)
    else LOCAL_WORLD_SIZE else the whole world on one node."""
    local_world_size = local_world_size or int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    return rank % local_world_size, local_world_size


def _open_lock_file() -> int:
    """The lock file in /dev/shm, or in the temporary folder where /dev/shm is missing or not writable."""
    flags = os.O_RDONLY | os.O_CREAT
    try:
        return os.open(os.path.join(SHARED_MEMORY, LOCK_FILE), flags, 0o666)
    except OSError:
        return os.open(os.path.join(tempfile.gettempdir(), LOCK_FILE), flags, 0o666)


def _acquire(fd: int, wait_s: float | None) -> bool:
    global _gave_up
    if wait_s is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return True
    deadline = time.monotonic() + (0.0 if _gave_up else wait_s)  # one wait per process: an exit frees many datasets
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                _gave_up = True
                return False
            time.sleep(0.01)


@contextmanager
def registration_lock(hold: bool = True, *, wait_s: float | None = None) -> Iterator[bool]:
    """Hold the host-wide streaming registration lock for the block, which gets whether it holds it (`hold=False`:
    a non-leader rank, no-op). `wait_s`: give up waiting after that long and run the block without it (at exit, see
    `streaming_build`)."""
    global _depth
    if not hold:
        yield False
        return
    if _depth:  # this process holds it already
        _depth += 1
        try:
            yield True
        finally:
            _depth -= 1
        return
    fd = _open_lock_file()
    try:
        if not _acquire(fd, wait_s):
            yield False
            return
        _depth += 1
        try:
            yield True
        finally:
            _depth -= 1
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@contextmanager
def streaming_build(rank: int, world_size: int, local_world_size: int | None) -> Iterator[None]:
    """Export this rank's world for streaming and, on the local leader, hold the registration lock while the block
    builds a StreamingDataset; every rank holds it again at exit while streaming unlinks the dataset's shared memory
    (an unlink between two ranks' scans makes them disagree as a registration does; waiting at most EXIT_WAIT_S).
    Refuses a world variable already set to another value (two launchers disagree)."""
    local_rank, local_world_size = local_world(rank, world_size, local_world_size)
    wanted = {"RANK": rank, "WORLD_SIZE": world_size, "LOCAL_WORLD_SIZE": local_world_size, "LOCAL_RANK": local_rank}
    for name, value in wanted.items():
        if name in os.environ and int(os.environ[name]) != value:
            raise UserError(f"{name}={os.environ[name]} in the environment but the data loader was given {value}")
        os.environ[name] = str(value)
    with registration_lock(hold=local_rank == 0):
        exit_turn = contextlib.ExitStack()  # at exit: lock, streaming's own clean-up of this dataset, unlock
        atexit.register(exit_turn.close)  # atexit runs the last registered first: this after the clean-up
        yield
        atexit.register(exit_turn.enter_context, registration_lock(wait_s=EXIT_WAIT_S))  # this before it
