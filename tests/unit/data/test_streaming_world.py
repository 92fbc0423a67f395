"""The host-wide streaming registration lock (data/streaming_world.py): one holder per host, reentrant within a
process, and a bounded wait where one is asked for (at exit). The race it prevents is in
tests/distributed/test_streaming_registration.py."""

import os
import subprocess
import sys

from ard_scale.data.streaming_world import registration_lock, streaming_build

PROBE = """
from ard_scale.data.streaming_world import registration_lock
with registration_lock(wait_s={wait}) as held:
    print(held)
"""


def another_process_holds(wait_s: float) -> bool:
    run = subprocess.run([sys.executable, "-c", PROBE.format(wait=wait_s)], capture_output=True, text=True, check=True)
    return run.stdout.strip() == "True"


def test_one_holder_per_host_reentrant_within_a_process():
    with registration_lock() as held:
        assert held
        with registration_lock() as again:  # the trainer's turn covers the loader's own
            assert again
        assert not another_process_holds(wait_s=0.2)  # it waited, then (as at exit) went on without the lock
        with registration_lock(hold=False) as non_leader:  # a non-leader rank takes no part
            assert not non_leader
    assert another_process_holds(wait_s=60.0)  # released: another process gets it


def test_a_build_exports_the_world_streaming_reads(monkeypatch):
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if k not in names})  # restored after
    with streaming_build(rank=3, world_size=4, local_world_size=2):
        assert [os.environ[n] for n in names] == ["3", "4", "1", "2"]
