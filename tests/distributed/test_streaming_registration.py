"""Building MDS loaders in a 2-rank job while another process on the host builds and frees them as fast as it can.

Every StreamingDataset registers a shared-memory prefix host-wide: each rank scans /dev/shm for the first free one,
then the local leader creates it. Another process registering, or unlinking one at exit, in between makes the build
fail ('shared memory registered does not match local leader' on rank 1, or FileExistsError '/NNNNNN_locals' on rank
0; mosaicml/streaming#901). The job and the other process each have their own TMPDIR, as jobs may. Without the
registration lock (data/streaming_world.py; in /dev/shm, held at exit too) or the trainer's turn
(distributed.collectives.streaming_build_turn) this test fails within the job's builds; with them every build
succeeds. Run as a script, this file is the other process (`interfere DATA GO STOP`) or one rank (`job DATA BUILDS GO`).
"""

import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

JOB_BUILDS = 30


def config(path):
    from ard_scale.config.data import DataConfig

    return DataConfig(format="mds", path=path, resolution=16, batch_size=2, num_canonical_nodes=1)


def interfere(data, go_file, stop_file):
    import atexit

    from ard_scale.data.mds import MDSLoader

    while not os.path.exists(go_file):  # the job's ranks are up
        time.sleep(0.01)
    builds = 0
    while not os.path.exists(stop_file):
        loader = MDSLoader(config(data), rank=0, world_size=1)
        del loader
        # what a process's exit does: streaming 0.13 unlinks a dataset's shared memory only in atexit clean-ups (and
        # keeps every object a build opened until then: the descriptors would grow with the square of the builds)
        atexit._run_exitfuncs()
        builds += 1
    print(f"builds={builds}")


def job(data, builds, go_file):
    import datetime

    import torch.distributed as dist

    from ard_scale.data.mds import MDSLoader
    from ard_scale.distributed.collectives import streaming_build_turn

    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank = dist.get_rank()
    if rank == 0:
        open(go_file, "w").close()
    for _ in range(builds):
        with streaming_build_turn(rank, 2, None):
            loader = MDSLoader(config(data), rank=rank, world_size=2)
        del loader
    dist.barrier()
    dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
def test_two_rank_builds_survive_a_process_registering_beside_them(tmp_path):
    from ard_scale.data.bundled import bundled_digits_path

    for name in ("theirs", "ours"):  # a StreamingDataset owns its folder while alive: one copy each
        shutil.copytree(bundled_digits_path("mds"), tmp_path / name)
    go, stop = tmp_path / "go", tmp_path / "stop"
    base = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        base.pop(name, None)
    me = os.path.abspath(__file__)
    # Each its own fresh TMPDIR (as Slurm may give each job), where streaming keeps the file locks its prefix scan
    # skips: both scans start from the same free prefixes in /dev/shm, which they share.
    for name in ("our_tmp", "their_tmp"):
        (tmp_path / name).mkdir()
    other = subprocess.Popen(
        [sys.executable, me, "interfere", str(tmp_path / "theirs"), str(go), str(stop)],
        env={**base, "TMPDIR": str(tmp_path / "their_tmp")}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        port, ranks = str(free_port()), []
        for rank in range(2):
            env = {**base, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "2",
                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "TMPDIR": str(tmp_path / "our_tmp")}  # fmt: skip
            cmd = [sys.executable, me, "job", str(tmp_path / "ours"), str(JOB_BUILDS), str(go)]
            ranks.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        outputs = [proc.communicate(timeout=240)[0] for proc in ranks]
        still_building = other.poll() is None  # it built beside the whole job
    finally:
        stop.touch()
        their_output = other.communicate(timeout=120)[0]
    for rank, (proc, output) in enumerate(zip(ranks, outputs, strict=True)):
        assert proc.returncode == 0, f"rank {rank} failed:\n{output[-3000:]}"
    assert other.returncode == 0, their_output[-3000:]
    assert still_building, their_output[-3000:]
    assert int(their_output.split("builds=")[-1].split()[0]) > JOB_BUILDS, their_output[-3000:]  # it really competed


if __name__ == "__main__":
    if sys.argv[1] == "interfere":
        interfere(*sys.argv[2:5])
    else:
        job(sys.argv[2], int(sys.argv[3]), sys.argv[4])
