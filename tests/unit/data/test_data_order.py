"""webdataset order: rank/worker sharding without duplicates or gaps, keyed on (seed, epoch); bucket resume."""

import itertools
import json

import pytest
from data_helpers import good_members, write_tar

from ard_scale.config.data import DataConfig
from ard_scale.data.loader import build_loader

# These tests corrupt samples on purpose: each skip's warning (naming the shard and sample) is expected here
# (test_data_corruption.py asserts its text).
pytestmark = pytest.mark.filterwarnings("ignore:skipped sample")

SHARD_SIZES = (3, 4, 5, 6, 7)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("order")
    for s, n in enumerate(SHARD_SIZES):
        write_tar(tmp / f"s{s}.tar", [m for i in range(n) for m in good_members(f"s{s}_{i}", i, size=(16, 16))])
    return tmp


def keys_of(loader, limit=None):
    """Keys per batch; with `limit`, stops right after that many batches (the state is then at batch `limit`)."""
    return [batch["keys"] for batch in itertools.islice(loader, limit)]


def config(path, **kwargs):
    base = dict(format="webdataset", path=str(path), batch_size=3, resolution=16, num_workers=0, num_epochs=2,
                chunk_size=2)  # fmt: skip
    return DataConfig(**{**base, **kwargs})


def test_ranks_partition_each_epoch_without_duplicate_or_gap(shards):
    all_keys = {f"s{s}_{i}" for s, n in enumerate(SHARD_SIZES) for i in range(n)}
    world_size, per_epoch = 3, {0: [], 1: []}
    for rank in range(world_size):
        loader = build_loader(config(shards), rank=rank, world_size=world_size)
        stream = [k for batch in keys_of(loader) for k in batch]
        n = loader.plan.num_per_epoch
        assert len(stream) == 2 * n and n in (len(all_keys) // 3, len(all_keys) // 3 + 1)
        per_epoch[0] += stream[:n]
        per_epoch[1] += stream[n:]
    for epoch_keys in per_epoch.values():
        assert sorted(epoch_keys) == sorted(all_keys)  # every sample exactly once per epoch
    assert per_epoch[0] != per_epoch[1]  # shard order reshuffled per epoch


def test_order_is_a_function_of_seed_and_epoch(shards):
    run = lambda seed: keys_of(build_loader(config(shards, seed=seed), rank=1, world_size=2))  # noqa: E731
    assert run(0) == run(0)
    assert run(0) != run(1)


def test_worker_count_does_not_change_the_stream(shards):
    streams = [keys_of(build_loader(config(shards, num_workers=w), rank=0, world_size=2)) for w in (0, 2)]
    assert streams[0] == streams[1]


def test_chunk_size_does_not_change_the_stream_or_a_resume(shards):
    """data.chunk_size may change on resume (it is not hashed): the stream and a resumed position are the same."""
    streams = [keys_of(build_loader(config(shards, num_workers=2, chunk_size=c), rank=0, world_size=2)) for c in (1, 5)]
    assert streams[0] == streams[1]
    first = build_loader(config(shards, num_workers=2, chunk_size=1), rank=0, world_size=2)
    head = keys_of(first, limit=3)
    resumed = build_loader(config(shards, num_workers=2, chunk_size=5), rank=0, world_size=2)
    resumed.load_state_dict(first.state_dict())
    assert head + keys_of(resumed) == streams[0]


def test_bucket_batches_and_exact_resume_with_workers(tmp_path):
    sizes = [(64, 32), (32, 64), (48, 48), (80, 40), (40, 40), (40, 80)]
    members = []
    for i in range(40):
        members += good_members(f"k{i:02d}", i, size=sizes[(i * 7) % len(sizes)])
        if i == 17:
            members += [("bad.png", b"broken"), ("bad.txt", b"x")]
    write_tar(tmp_path / "s0.tar", members[:40])  # split between samples
    write_tar(tmp_path / "s1.tar", members[40:])
    cfg = config(tmp_path, buckets=True, resolution=64, batch_size=4, num_workers=2, chunk_size=3)

    full = []
    for batch in build_loader(cfg, rank=0, world_size=1):
        assert batch["images"].shape[0] == len(batch["keys"])
        full.append((batch["keys"], tuple(batch["images"].shape[2:])))
    assert len({shape for _, shape in full}) >= 3  # several buckets in use
    assert sorted(k for keys, _ in full for k in keys) == sorted([f"k{i:02d}" for i in range(40)] * 2)

    for k in (1, 5, 13):
        first = build_loader(cfg, rank=0, world_size=1)
        head = keys_of(first, limit=k)
        state = json.loads(json.dumps(first.state_dict()))  # plain JSON: safe in any checkpoint
        resumed = build_loader(cfg, rank=0, world_size=1)
        resumed.load_state_dict(state)
        tail = keys_of(resumed)
        assert head + tail == [keys for keys, _ in full], k
        assert resumed.num_skipped == 2  # the bad sample, once per epoch, never double-counted


def test_state_from_another_rank_is_rejected(shards):
    state = build_loader(config(shards), rank=0, world_size=2).state_dict()
    with pytest.raises(ValueError, match="rank"):
        build_loader(config(shards), rank=1, world_size=2).load_state_dict(state)


def test_streamed_urls_read_like_local_files(shards, tmp_path):
    # "pipe:" urls go through webdataset's gopen as non-seekable streams, the path remote (http, s3) shards take
    shardlist = [{"url": f"pipe:cat {shards / f's{s}.tar'}", "nsamples": n} for s, n in enumerate(SHARD_SIZES)]
    (tmp_path / "shards.json").write_text(json.dumps({"shardlist": shardlist}))
    local = keys_of(build_loader(config(shards, num_workers=2), rank=1, world_size=2))
    streamed = keys_of(build_loader(config(tmp_path / "shards.json", num_workers=2), rank=1, world_size=2))
    assert streamed == local and len(streamed) > 0
