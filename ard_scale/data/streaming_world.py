"""How this process appears to mosaicml-streaming, and one host-wide lock around building its datasets.

Streaming reads rank and world from RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE; `streaming_build` exports them
from the loader's arguments. Building a StreamingDataset registers a shared-memory prefix host-wide, in /dev/shm:
each local rank scans for the first free prefix on its own, then the node's local leader creates it. A dataset built
at the same time by any other process on the host (another job, a single-process tool, a parallel test) can register
between those steps, and the build fails: the ranks' scans disagree ("shared memory registered does not match local
leader", mosaicml/streaming#901) or the leader finds its prefix taken (FileExistsError '/NNNNNN_locals').

So ard_scale builds every streaming dataset while the local leader holds `registration_lock`, and a multi-rank
caller lets its ranks start the build only after the leader holds it (distributed.collectives.streaming_build_turn:
the leader locks, then all ranks meet in a barrier). Two builds under the lock never overlap. The lock is a `flock`
on a file in the temporary folder, released by the kernel if its holder dies; it is reentrant within a process.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

LOCK_FILE = "ard_scale_streaming_registration.lock"
_depth = 0  # registration_lock is reentrant: the caller's turn covers the loader's own


def local_world(rank: int, world_size: int, local_world_size: int | None) -> tuple[int, int]:
    """(local rank, local world size) as streaming will see them: `local_world_size` (`data.local_world_size`)
    else LOCAL_WORLD_SIZE else the whole world on one node."""
    local_world_size = local_world_size or int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    return rank % local_world_size, local_world_size


@contextmanager
def registration_lock(hold: bool = True) -> Iterator[None]:
    """Hold the host-wide streaming registration lock for the block (`hold=False`: a non-leader rank, no-op)."""
    global _depth
    if not hold:
        yield
        return
    fd = None
    if _depth == 0:
        fd = os.open(os.path.join(tempfile.gettempdir(), LOCK_FILE), os.O_RDONLY | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the lock


@contextmanager
def streaming_build(rank: int, world_size: int, local_world_size: int | None) -> Iterator[None]:
    """Export this rank's world for streaming and, on the local leader, hold the registration lock while the block
    builds a StreamingDataset. Refuses a world variable already set to another value (two launchers disagree)."""
    local_rank, local_world_size = local_world(rank, world_size, local_world_size)
    wanted = {"RANK": rank, "WORLD_SIZE": world_size, "LOCAL_WORLD_SIZE": local_world_size, "LOCAL_RANK": local_rank}
    for name, value in wanted.items():
        if name in os.environ and int(os.environ[name]) != value:
            raise ValueError(f"{name}={os.environ[name]} in the environment but the data loader was given {value}")
        os.environ[name] = str(value)
    with registration_lock(hold=local_rank == 0):
        yield
