"""Exact resume with 2 ranks x 2 workers, both formats, in real processes.

Phase 1 (2 processes, one per rank): the uninterrupted run, and runs stopped after k batches that save
their loader state. Phase 2 (2 NEW processes): load each state and run to the end. For every rank and k,
keys(first k batches) + keys(resumed run) must equal keys(uninterrupted run).
Run as a script, this file is one rank of one phase.
"""

import io
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

NUM_SAMPLES, BATCH, WORLD, STOPS = 48, 4, 2, (3, 7)  # 6 batches per rank per epoch: k=7 resumes in epoch 1


def config(fmt, path):
    from ard_scale.config.data import DataConfig

    return DataConfig(format=fmt, path=path, batch_size=BATCH, resolution=16, num_workers=2, num_epochs=2,
                      chunk_size=3, num_canonical_nodes=1, seed=7)  # fmt: skip


def rank_main(phase, rank, root):
    import itertools

    import torch.distributed as dist

    from ard_scale.data.loader import build_loader
    from ard_scale.distributed.collectives import streaming_build_turn

    dist.init_process_group("gloo")  # from torchrun's variables, as the trainer's ranks have it

    def build(fmt, path):  # in this job's turn, as the trainer builds (other files' jobs build MDS loaders too)
        with streaming_build_turn(rank, WORLD, None):
            return build_loader(config(fmt, path), rank=rank, world_size=WORLD)

    out = {}
    for fmt in ("webdataset", "mds"):
        if phase == "first":
            out[f"{fmt}_full"] = [b["keys"] for b in build(fmt, os.path.join(root, f"{fmt}_full"))]
        for k in STOPS:
            loader = build(fmt, os.path.join(root, f"{fmt}_k{k}"))
            state_file = os.path.join(root, f"state_{fmt}_k{k}_rank{rank}.json")
            if phase == "first":
                out[f"{fmt}_head{k}"] = [b["keys"] for b in itertools.islice(loader, k)]
                with open(state_file, "w") as f:
                    json.dump(loader.state_dict(), f)
            else:
                with open(state_file) as f:
                    loader.load_state_dict(json.load(f))
                out[f"{fmt}_tail{k}"] = [b["keys"] for b in loader]
    with open(os.path.join(root, f"{phase}_rank{rank}.json"), "w") as f:
        json.dump(out, f)
    dist.destroy_process_group()


def build_data(root):
    import numpy as np
    from PIL import Image

    from ard_scale.data.writers import write_shards

    def samples():
        for i in range(NUM_SAMPLES):
            pixels = np.random.default_rng(i).integers(0, 256, (16, 16, 3), dtype=np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="PNG")
            yield {"key": f"s{i:03d}", "image": buffer.getvalue(), "ext": "png", "caption": f"c{i}", "label": i % 10}

    write_shards(samples(), os.path.join(root, "built"), formats=("webdataset", "mds"), shard_bytes=8 << 10)
    # one copy per run: a StreamingDataset owns its folder while alive, and every copy orders identically
    for fmt in ("webdataset", "mds"):
        for name in ("full", *(f"k{k}" for k in STOPS)):
            shutil.copytree(os.path.join(root, "built", fmt), os.path.join(root, f"{fmt}_{name}"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_phase(phase, root):
    procs, port = [], str(free_port())
    for rank in range(WORLD):
        # torchrun's variables: the ranks' gloo group, which streaming's builds use too
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(WORLD), "LOCAL_RANK": str(rank),
               "LOCAL_WORLD_SIZE": str(WORLD), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
               "OMP_NUM_THREADS": "1"}  # fmt: skip
        cmd = [sys.executable, os.path.abspath(__file__), phase, str(rank), root]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for rank, proc in enumerate(procs):
        output, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, f"{phase} rank {rank} failed:\n{output[-4000:]}"
    results = []
    for rank in range(WORLD):
        with open(os.path.join(root, f"{phase}_rank{rank}.json")) as f:
            results.append(json.load(f))
    return results


@pytest.mark.distributed
@pytest.mark.slow
def test_resume_is_exact_with_two_ranks_and_two_workers(tmp_path):
    root = str(tmp_path)
    build_data(root)
    first = run_phase("first", root)
    second = run_phase("second", root)
    all_keys = sorted(f"s{i:03d}" for i in range(NUM_SAMPLES))
    for fmt in ("webdataset", "mds"):
        per_rank_epochs = []
        for rank in range(WORLD):
            full = first[rank][f"{fmt}_full"]
            assert len(full) == 2 * NUM_SAMPLES // (WORLD * BATCH), (fmt, rank, len(full))
            for k in STOPS:
                head, tail = first[rank][f"{fmt}_head{k}"], second[rank][f"{fmt}_tail{k}"]
                assert len(head) == k
                assert head + tail == full, (fmt, rank, k)
            flat = [key for batch in full for key in batch]
            per_rank_epochs.append((flat[: len(flat) // 2], flat[len(flat) // 2 :]))
        for epoch in (0, 1):  # ranks together see every sample exactly once per epoch
            assert sorted(per_rank_epochs[0][epoch] + per_rank_epochs[1][epoch]) == all_keys, (fmt, epoch)
        assert per_rank_epochs[0][0] != per_rank_epochs[0][1]  # a new order each epoch


if __name__ == "__main__":
    rank_main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
