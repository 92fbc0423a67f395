"""Small collectives over all ranks (flags and counters), on the device the process group's backend reduces:
NCCL reduces CUDA tensors only, gloo CPU ones. Every caller of a small all-reduce goes through here."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist

from ard_scale.data.streaming_world import local_world, registration_lock

__all__ = [
    "all_ranks",
    "any_rank",
    "collective_device",
    "streaming_build_turn",
    "sum_counts_over_ranks",
    "sum_over_ranks",
]


def collective_device(backend: str | None) -> torch.device:
    """The device a small tensor must live on to be all-reduced under `backend` (None: no process group)."""
    if backend is not None and str(backend).lower() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _backend() -> str | None:
    return dist.get_backend() if dist.is_available() and dist.is_initialized() else None


def _reduce(values: list[float], op) -> torch.Tensor:
    backend = _backend()
    t = torch.tensor(values, dtype=torch.float64, device=collective_device(backend))
    if backend is not None:
        dist.all_reduce(t, op=op)
    return t.cpu()


def any_rank(flag: bool) -> bool:
    """True on every rank if it is true on any rank, so every rank takes the same branch."""
    return bool(_reduce([1.0 if flag else 0.0], dist.ReduceOp.MAX)[0] > 0)


def all_ranks(flag: bool) -> bool:
    """True on every rank iff it is true on every rank (e.g. a cache file every rank can see)."""
    return bool(_reduce([1.0 if flag else 0.0], dist.ReduceOp.MIN)[0] > 0)


def sum_over_ranks(counts: dict[str, int]) -> dict[str, int]:
    """The sum over ranks of each counter. Every rank must pass the same keys (sorted here, so order is free)."""
    keys = sorted(counts)
    summed = _reduce([float(counts[k]) for k in keys], dist.ReduceOp.SUM)
    return {k: int(round(v)) for k, v in zip(keys, summed.tolist(), strict=True)}


def sum_counts_over_ranks(counts: dict[str, int]) -> dict[str, int]:
    """Per-key sums over ranks of counters whose keys may differ between ranks (e.g. skipped samples by reason: a
    reason one rank never met is absent there). Collective: every rank calls it."""
    if _backend() is None:
        return {k: int(v) for k, v in sorted(counts.items())}
    everyone: list[dict[str, int] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, {k: int(v) for k, v in counts.items()})
    keys = sorted({k for c in everyone for k in c})
    return sum_over_ranks({k: counts.get(k, 0) for k in keys})


@contextmanager
def streaming_build_turn(rank: int, world_size: int, local_world_size: int | None) -> Iterator[None]:
    """This job's turn to build its data loader (collective): the node's local leader takes the host-wide streaming
    registration lock, then every rank meets in a barrier, so no rank scans /dev/shm for a free prefix before its
    leader holds the lock and no other process can register one until the build is done (streaming_world.py)."""
    local_rank, _ = local_world(rank, world_size, local_world_size)
    with registration_lock(hold=local_rank == 0):
        if _backend() is not None:
            dist.barrier()
        yield
